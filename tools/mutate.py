"""Mutation check: break the method one edit at a time in a copy of the repo and see a test fail.

Usage: ``python -m tools.mutate [--only NAME ...] [--list] [--out table.md]``

Each mutation is (file, old text, new text, name, tests). The repository's tracked and untracked
non-ignored files are copied once into a temporary folder (beside a link to ``../shared``, which
tests read); then, for each mutation, the old text (which must occur exactly once) is replaced,
``python -m pytest -x -q <tests>`` runs in the copy, and the file is restored. A mutation is
*killed* when the tests fail, *survived* when they pass. Prints a markdown table; exits 1 if any
mutation survived or did not apply.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUMBING = "tests/test_method_plumbing.py"
DENSIFY = "tests/test_densify_schedule.py"
LOOP = "tests/test_loop_golden.py"


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (exactly one occurrence) by ``new`` in ``file``; ``tests`` must then fail."""

    file: str
    old: str
    new: str
    name: str
    tests: tuple[str, ...] = (PLUMBING,)


def _m(file: str, old: str, new: str, name: str, *tests: str) -> Mutation:
    return Mutation(file, old, new, name, tests or (PLUMBING,))


IMAGE = "configs/image.yaml"
MUTATIONS: list[Mutation] = [
    # -- issue 21: stage plans (config values and the code that reads them)
    _m(IMAGE, "  eta: 0.5 ", "  eta: 0.0 ", "stage-1 eta 0.5 -> 0 (config)"),
    _m("pipeline/plans.py", "eta=s.eta,", "eta=0.0,", "stage-1 eta 0.5 -> 0 (plan)"),
    _m(IMAGE, "  cfg: 3.0 ", "  cfg: 1.0 ", "stage-1 CFG 3 -> 1 (config)"),
    _m("pipeline/plans.py", "cfg=s.cfg,", "cfg=1.0,", "stage-1 CFG 3 -> 1 (plan)"),
    _m(IMAGE, "  eta: 0.0               # DDIM eta", "  eta: 1.0  # DDIM eta", "stage-2 eta 0 -> 1 (config)"),
    _m("pipeline/plans.py", "eta=r.eta,", "eta=1.0,", "stage-2 eta 0 -> 1 (plan)"),
    _m(IMAGE, "  cfg: 2.0 ", "  cfg: 7.5 ", "stage-2 CFG 2 -> 7.5 (config)"),
    _m("pipeline/plans.py", "cfg=r.cfg,", "cfg=7.5,", "stage-2 CFG 2 -> 7.5 (plan)"),
    # -- issue 21: representations
    _m(
        "pipeline/gaussians.py",
        "if in_window and self.step_count % g.densification_interval == 0:",
        "if False:",
        "no densification",
        DENSIFY,
    ),
    _m("pipeline/stage1.py", "            rep.finish()\n", "            pass\n", "no final prune (stage)"),
    _m(
        "pipeline/gaussians.py",
        "self.densifier.final_prune()",
        "pass",
        "no final prune (representation)",
        DENSIFY,
    ),
    _m(
        "pipeline/texture.py",
        "loss = F.mse_loss(out.rgb, target)",
        "loss = F.l1_loss(out.rgb, target)",
        "stage-2 L1 instead of MSE",
    ),
    _m(
        "pipeline/texture.py",
        "loss = loss + self.ref_weight * F.mse_loss(ref * m, self.ref_rgb * m)",
        "loss = loss",
        "no stage-2 reference loss (loss)",
    ),
    _m(
        "pipeline/stage2.py",
        "ref_weight=cfg.refine.ref_loss,",
        "ref_weight=0.0,",
        "no stage-2 reference loss (stage)",
    ),
    _m(IMAGE, "  ref_loss: 1.0 ", "  ref_loss: 0.0 ", "no stage-2 reference loss (config)"),
    _m(
        "pipeline/setup.py",
        "            cfg.cameras.ref_azimuth,\n",
        "            cfg.cameras.ref_azimuth + 180,\n",
        "reference camera rotated 180 degrees",
    ),
    # -- added: schedules
    _m(
        "pipeline/plans.py",
        "t2_for_iteration(k, s.iters, fwd, s.t_start, s.t_end)",
        "t2_for_iteration(k, s.iters, fwd, s.t_end, s.t_start)",
        "t2 annealed upwards",
    ),
    _m(IMAGE, "  inv_ratio: 0.6 ", "  inv_ratio: 1.0 ", "inv_ratio 0.6 -> 1 (noise-adding only)"),
    _m("pipeline/plans.py", "s.inv_ratio, sched", "1.0, sched", "inv_ratio ignored by the plan"),
    _m(
        "configs/imagedream.yaml",
        "  inv_ratio: 1.0 ",
        "  inv_ratio: 0.6 ",
        "ImageDream inv_ratio 1 -> 0.6",
    ),
    _m(IMAGE, "  steps_max: 15 ", "  steps_max: 10 ", "reconstruction steps 15 -> 10"),
    _m(IMAGE, "  init_steps: 15 ", "  init_steps: 0 ", "no init pass"),
    _m(
        "pipeline/sir.py",
        "passes.append((True, 0, 0,",
        "passes.append((False, 0, 0,",
        "init pass not from noise",
    ),
    _m(IMAGE, "  strength: 0.8 ", "  strength: 0.9 ", "stage-2 strength 0.8 -> 0.9"),
    _m(IMAGE, "  t_start: 0.8 ", "  t_start: 0.9 ", "t_start 0.8 -> 0.9 (the authors' later code)"),
    _m(IMAGE, "  even_view: true ", "  even_view: false ", "random azimuths instead of even"),
    _m(IMAGE, "  min_ver: -30 ", "  min_ver: -10 ", "elevation range -30 -> -10"),
    _m(
        "pipeline/plans.py",
        'resize_mode="bicubic"',
        'resize_mode="bilinear"',
        "stage-1 resize bicubic -> bilinear",
    ),
    _m(
        "pipeline/plans.py",
        'resize_mode="bilinear"',
        'resize_mode="bicubic"',
        "stage-2 resize bilinear -> bicubic",
    ),
    _m(
        "pipeline/stage1.py", "WHITE = (1.0, 1.0, 1.0)", "WHITE = (0.0, 0.0, 0.0)", "stage-1 black background"
    ),
    _m(
        "pipeline/stage2.py", "WHITE = (1.0, 1.0, 1.0)", "WHITE = (0.0, 0.0, 0.0)", "stage-2 black background"
    ),
    _m(
        "configs/imagedream.yaml",
        "  ref_azimuth: 90.0 ",
        "  ref_azimuth: 0.0 ",
        "ImageDream reference azimuth 90 -> 0",
    ),
    # -- added: losses and learning rates
    _m(
        "pipeline/gaussians.py",
        "w_views = [self.lambda_target / V] * V",
        "w_views = [self.lambda_target / target[0].numel()] * V",
        "stage-1 L1 mean instead of sum",
    ),
    _m(IMAGE, "  ref_loss: 0.3 ", "  ref_loss: 0.03 ", "stage-1 reference weight 0.3 -> 0.03"),
    _m(IMAGE, "  ref_mask_loss: 0.01 ", "  ref_mask_loss: 0.0 ", "no stage-1 mask loss"),
    _m(IMAGE, "  texture_lr: 0.2 ", "  texture_lr: 0.02 ", "stage-2 LR 0.2 -> 0.02"),
    _m(
        "pipeline/gaussians.py",
        "lr_final=g.position_lr_final * g.spatial_lr_scale,",
        "lr_final=g.position_lr_final,",
        "xyz LR final value unscaled",
        DENSIFY,
    ),
    _m(
        IMAGE,
        "  position_lr_max_steps: 500 ",
        "  position_lr_max_steps: 300 ",
        "xyz LR over 300 steps",
        DENSIFY,
    ),
    _m(IMAGE, "  feature_lr: 0.01 ", "  feature_lr: 0.001 ", "colour LR 0.01 -> 0.001", DENSIFY),
    # -- added: densification
    _m(IMAGE, "  densification_interval: 100 ", "  densification_interval: 50 ", "densify every 50", DENSIFY),
    _m(IMAGE, "  density_end_iter: 300 ", "  density_end_iter: 299 ", "no densify at step 300", DENSIFY),
    _m(
        IMAGE,
        "  densify_grad_threshold: 0.01 ",
        "  densify_grad_threshold: 0.02 ",
        "grad threshold x2",
        DENSIFY,
    ),
    _m(IMAGE, "  percent_dense: 0.01 ", "  percent_dense: 0.02 ", "clone/split boundary x2", DENSIFY),
    _m(
        "gs_renderer/densify.py",
        "torch.log(s / (0.8 * k))",
        "torch.log(s / k)",
        "split scale / 2 not / 1.6",
        DENSIFY,
    ),
    _m(
        "pipeline/gaussians.py",
        "add_stats(out, views=self.views,",
        "add_stats(out, views=None,",
        "reference row in the densify statistics",
        DENSIFY,
    ),
    _m(
        "gs_renderer/densify.py",
        "g, radii = g[-1:], radii[-1:]",
        "g, radii = g[:1], radii[:1]",
        "paper mode: first view instead of last",
        DENSIFY,
    ),
    # -- added: only the loop golden against the authors' code sees these
    _m("gs_renderer/model.py", "lr=0.0, eps=1e-15)", "lr=0.0, eps=1e-8)", "Adam eps 1e-15 -> 1e-8", LOOP),
    _m(
        "gs_renderer/densify.py",
        "torch.cat([params[name].detach()[clone], new_split[name]])",
        "torch.cat([new_split[name], params[name].detach()[clone]])",
        "split children before clones",
        DENSIFY,
    ),
    _m(
        "pipeline/sir.py",
        "target = resize(refined.images.float(), plan.render_size, plan.resize_mode)",
        'target = resize(refined.images.float(), plan.render_size, "bilinear")',
        "target resized bilinear",
        LOOP,
    ),
    _m(
        "configs/image_paper.yaml",
        "  densify_stats: last ",
        "  densify_stats: all ",
        "paper mode: all-view stats",
        LOOP,
    ),
    _m(
        "configs/image.yaml",
        "  densify_stats: last ",
        "  densify_stats: all  ",
        "default: all-view stats",
        LOOP,
    ),
    _m(
        "configs/image.yaml",
        "  ssaa_min: 0.125 ",
        "  ssaa_min: 1.0   ",
        "default: supersampling off",
        PLUMBING,
    ),
    _m(
        "configs/image.yaml",
        "  merge_ratio: 0.01 ",
        "  merge_ratio: 0.0001 ",
        "default: fine vertex merge",
        PLUMBING,
    ),
    _m(
        "pipeline/texture.py",
        "max(self.ssaa[0], 2 * float(self.rng.random()))",
        "max(self.ssaa[0], float(self.rng.random()))",
        "paper mode: supersampling scale in [0, 1]",
    ),
    # -- issue 15: geometry defaults and the hidden-face drop; issue 20: the fused GroupNorm
    _m(
        "mesh_renderer/visibility.py",
        "keep = seen | touched[mesh.f].all(1)",
        "keep = torch.ones_like(seen)",
        "hidden faces kept",
        "tests/test_hidden_faces.py",
    ),
    _m("configs/image.yaml", "  max_scale: 0.02 ", "  max_scale: 0.0  ", "default: no scale cap", LOOP),
    _m(
        "configs/image.yaml",
        "  bg_alpha_loss: 1.0 ",
        "  bg_alpha_loss: 0.0 ",
        "default: no background-alpha loss",
    ),
    _m(
        "configs/image.yaml",
        "  fg_alpha_loss: 1.0 ",
        "  fg_alpha_loss: 0.0 ",
        "default: no foreground-alpha loss",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "pipeline/gaussians.py",
        "1.0 - F.max_pool2d(bg, 3, stride=1, padding=1)",
        "1.0 - bg",
        "foreground-alpha loss on edge pixels too",
        "tests/test_method_plumbing.py",
    ),
    _m(
        "pipeline/gaussians.py",
        "alpha_lin = (g.bg_alpha_loss * bg - g.fg_alpha_loss * fg) / V",
        "alpha_lin = (g.bg_alpha_loss * bg - g.fg_alpha_loss * bg) / V",
        "foreground-alpha loss on the background",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "pipeline/stage1.py",
        'if "input" in ex.hull and ref is not None and input_view_fitted(cfg):',
        "if False:",
        "input-mask hull skipped",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "configs/image.yaml",
        "  hull: [input, refined] ",
        "  hull: []               ",
        "default: no input-mask hull",
        "tests/test_method_plumbing.py",
    ),
    _m(
        "configs/image.yaml",
        "  hull: [input, refined] ",
        "  hull: [input]          ",
        "default: no refined-view hull",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "configs/image.yaml",
        "  hull_ramp: 0.5 ",
        "  hull_ramp: 0.0 ",
        "default: no hull ramp",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "gs_renderer/extract.py",
        "cap = level * torch.where(inside, seen, torch.ones_like(seen)).amin(0) / threshold",
        "cap = level * seen.amin(0) / threshold",
        "carving: points no view sees cut too",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "gs_renderer/extract.py",
        "a = signed_distance(a > threshold)",
        "a = a - threshold",
        "ramp carving on the alpha, not the distance",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "gs_renderer/extract.py",
        "torch.where(inside == far, far, inside - 0.5)",
        "torch.where(inside == far, far, inside)",
        "signed distance: edge on the pixel centres",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "pipeline/hull_views.py",
        "if t2 is None or t2 > self.t_max:",
        "if t2 is not None and t2 > self.t_max:",
        "refined hull: the init pass kept",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "pipeline/sir.py",
        "on_target(None if from_noise else t2, cams, target)",
        "on_target(t2, cams, target)",
        "refined hull: the init pass reported with its t2",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "configs/image.yaml",
        "  level_views: 3 ",
        "  level_views: 1 ",
        "default: one level view",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "configs/image_paper.yaml",
        "  level_views: 0 ",
        "  level_views: 3 ",
        "paper mode: level views",
        "tests/test_method_plumbing.py",
    ),
    _m(
        "pipeline/sir.py",
        "cams = sample_cameras(plan, rng, device, None if from_noise else t2)",
        "cams = sample_cameras(plan, rng, device, None)",
        "level views: never applied in the loop",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "pipeline/sir.py",
        "offsets[[round(i * plan.views / k) for i in range(k)]] = 0",
        "offsets[:k] = 0",
        "level views: not spread around the orbit",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "pipeline/sir.py",
        "if k > 0 and t2 is not None and t2 <= plan.late_t2_max:",
        "if k > 0:",
        "level views: in every iteration and the init pass",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "gs_renderer/model.py",
        "((p.norm(dim=-1) <= radius) | misses)",
        "(p.norm(dim=-1) <= 2.0)",
        "silhouette init: the whole cone to the outer radius",
        "tests/test_geometry_quality.py",
    ),
    _m(
        "configs/image.yaml",
        "  init: silhouette ",
        "  init: ball       ",
        "default: ball init",
        "tests/test_method_plumbing.py",
    ),
    _m("configs/image_paper.yaml", "  max_scale: 0.0 ", "  max_scale: 0.02", "paper mode: scale cap"),
    _m(
        "guidance/nets/fused_geglu_kernel.py",
        "y = a * (0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)))",
        "y = a * (0.5 * g * (1.0 + tl.math.erf(g)))",
        "fused GEGLU with a wrong GELU",
        "tests/test_fused_norm.py",
    ),
    _m(
        "guidance/nets/fused_norm_kernels.py",
        "var = (tl.sum(m2_k, axis=0) + tl.sum(cnt * dev * dev, axis=0)) / total\n    rstd = 1.0 / tl.sqrt(var + eps)",
        "var = (tl.sum(m2_k, axis=0) + tl.sum(cnt * dev * dev, axis=0)) / total\n    rstd = 1.0 / tl.sqrt(var)",
        "fused GroupNorm without eps",
        "tests/test_fused_norm.py",
    ),
    _m(
        "guidance/nets/fused_norm_kernels.py",
        "var = tl.sum(tl.sum(d * d, axis=1), axis=0) / n\n    rstd = 1.0 / tl.sqrt(var + eps)",
        "var = tl.sum(tl.sum(d * d, axis=1), axis=0) / n\n    rstd = 1.0 / tl.sqrt(var)",
        "one-pass fused GroupNorm without eps",
        "tests/test_fused_norm.py",
    ),
    # -- the stage-1 loss node (pipeline/view_loss.py)
    _m(
        "pipeline/view_loss.py",
        "return g_rgb * grad, g_alpha * grad, None",
        "return g_rgb, g_alpha, None",
        "loss node ignores the incoming gradient",
        "tests/test_view_loss.py",
    ),
    _m(
        "pipeline/view_loss.py",
        "g_alpha = q + terms.alpha_lin",
        "g_alpha = q",
        "loss node drops the alpha terms' gradient",
        "tests/test_view_loss.py",
    ),
    _m(
        "pipeline/gaussians.py",
        "        if self._terms_key != key:",
        "        if self._terms_key is None:",
        "loss constants not rebuilt for a new target",
        "tests/test_view_loss.py",
    ),
]


def _copy_repo(dst: Path) -> None:
    """Copy tracked + untracked non-ignored files of the repo into ``dst``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run_one(repo: Path, m: Mutation) -> tuple[str, float, str]:
    """Apply ``m`` in ``repo``, run its tests, restore; returns (status, seconds, first failure line)."""
    path = repo / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        return f"not applied ({n} matches)", 0.0, ""
    path.write_text(text.replace(m.old, m.new))
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
            cwd=repo,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        path.write_text(text)
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    status = "killed" if r.returncode != 0 else "SURVIVED"
    return status, time.perf_counter() - t0, (failed[0] if failed else "")[:90]


def main(argv: list[str] | None = None) -> int:
    """Run the mutations (all, or ``--only`` names containing the given texts); print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", nargs="*", default=None, help="run the mutations whose name contains any of these"
    )
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    muts = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    if args.list:
        for m in muts:
            print(f"{m.name}  ({m.file}; {' '.join(m.tests)})")
        return 0
    rows = ["| # | mutation | file | result | s | first failing test |", "|---|---|---|---|---|---|"]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        repo = Path(tmp) / "repo"
        _copy_repo(repo)
        shared = (ROOT / ".." / "shared").resolve()
        if shared.exists():  # tests read ../shared relative to the repo root
            (Path(tmp) / "shared").symlink_to(shared)
        for i, m in enumerate(muts, 1):
            status, secs, why = run_one(repo, m)
            bad += status != "killed"
            rows.append(f"| {i} | {m.name} | `{m.file}` | {status} | {secs:.0f} | {why.replace('|', '/')} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    print(f"\n{len(muts) - bad}/{len(muts)} killed")
    if args.out:
        args.out.write_text(table + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
