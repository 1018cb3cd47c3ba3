"""The gradio page: upload an image, tune a few settings, watch progress, view and download the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import UserError
from webapp.jobs import Generator, Settings

__all__ = ["build_ui"]

INTRO = """# MicroDreamer: image to 3D
Upload an object photo: a PNG with alpha is used as is; an RGB image or JPG has its background removed
first (a text model such as MVDream takes a prompt instead of the photo). The result is a textured mesh (`.glb`), the 3D Gaussians (`.ply`) and a preview grid. Requests
run one at a time; while others run, your place in the queue is shown here."""


def _describe(summary: dict[str, Any]) -> str:
    """One Markdown line of a finished run's times and diffusion calls."""
    parts = [f"done in **{summary.get('total_seconds', 0):.1f} s**"]
    for stage in ("stage1", "stage2"):
        if stage in summary:
            nfe = summary[stage].get("nfe")
            parts.append(f"{stage}: {nfe} diffusion calls")
    return "; ".join(parts)


def build_ui(gen: Generator) -> gr.Blocks:
    """The page, wired to ``gen``; its one event (api name ``generate``) runs one job at a time."""
    d = gen.defaults()
    names = gen.model_names()
    any_prompt = any(gen.takes_prompt(n) for n in names)

    def prompt_label(name: str) -> str:
        return "Text prompt (required)" if gen.is_text(name) else "Text prompt (ImageDream; optional)"

    def on_model(name: str) -> tuple:
        """Show the upload for image models; the prompt (required) for text models."""
        name = name or gen.default_model
        return (
            gr.File(visible=not gen.is_text(name)),
            gr.Textbox(visible=gen.takes_prompt(name), label=prompt_label(name)),
        )

    def generate(
        file: str | None,
        model: str,
        seed: float,
        elevation: float,
        iters: float,
        prompt: str,
        video: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        text = gen.is_text(model or gen.default_model)
        if text:
            if not (prompt or "").strip():
                raise gr.Error("enter a text prompt first (this model makes 3D from text)")
        elif not file:
            raise gr.Error("choose an image file first (PNG with alpha, or RGB/JPG)")
        path = None if text else Path(file)
        if path is not None and path.stat().st_size > gen.max_upload_bytes:
            raise gr.Error(f"the upload is over the {gen.max_upload_bytes / 2**20:.0f} MiB limit")
        progress(0.0, desc="starting")

        def on_progress(desc: str, i: int, n: int) -> None:
            progress((i, n), desc=desc, unit="iterations")

        settings = Settings(
            model=model or None,
            seed=int(seed) if seed is not None else None,
            elevation=float(elevation) if elevation is not None else None,
            iters=int(iters) if iters is not None else None,
            prompt=prompt if gen.takes_prompt(model or gen.default_model) else None,
            video=bool(video),
        )
        try:
            if path is None:  # a text model: the prompt is the input; a file left chosen is not sent
                result = gen.run(None, None, settings, on_progress)
            else:
                result = gen.run(path.read_bytes(), path.name, settings, on_progress)
        except UserError as e:
            raise gr.Error(str(e)) from None
        out = result.outputs
        files = [str(p) for p in out.values()]
        return (
            str(out["glb"]),
            str(out["final_preview"]) if "final_preview" in out else None,
            gr.Video(value=str(out["video"]) if "video" in out else None, visible="video" in out),
            files,
            {k: v for k, v in result.summary.items() if k not in ("started", "finished")},
            _describe(result.summary),
        )

    with gr.Blocks(title="MicroDreamer") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(
                    label="Input image",
                    file_types=["image"],
                    type="filepath",
                    elem_id="upload",
                    visible=not gen.is_text(names[0]),
                )
                model = gr.Dropdown(names, value=names[0], label="Guidance model", visible=len(names) > 1)
                prompt = gr.Textbox(
                    value=d["prompt"], label=prompt_label(names[0]), visible=any_prompt, elem_id="prompt"
                )
                with gr.Row():
                    seed = gr.Number(value=d["seed"], precision=0, label="Seed")
                    iters = gr.Number(value=d["iters"], precision=0, minimum=0, label="SIR iterations")
                elevation = gr.Slider(
                    -60, 60, value=d["elevation"], step=1, label="Input elevation (degrees)"
                )
                video = gr.Checkbox(value=d["video"], label="Turntable video")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status", label="Status")
                viewer = gr.Model3D(label="Textured mesh (.glb)", elem_id="viewer", height=420)
                with gr.Row():
                    preview = gr.Image(label="Preview", type="filepath", interactive=False)
                    turntable = gr.Video(label="Turntable", interactive=False, visible=False)
                downloads = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                )
                report = gr.JSON(label="Report")  # seconds per phase; nfe = diffusion calls
        model.change(on_model, inputs=[model], outputs=[image, prompt])
        run.click(
            generate,
            inputs=[image, model, seed, elevation, iters, prompt, video],
            outputs=[viewer, preview, turntable, downloads, report, status],
            api_name="generate",
            concurrency_limit=1,
        )
    return demo
