"""Pipeline-independent pieces: cameras, configuration, input images, the SIR loop, timing."""
