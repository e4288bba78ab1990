"""AnyTalker two-stage training (imports anytalker_core, never ComfyUI).

* :mod:`train.prepare` — clips → filtered, encoded samples on disk (the only stage with encoders)
* :mod:`train.data` — cached samples → batches, stage 1's side-by-side two-person concatenation
* :mod:`train.buckets` — resolution buckets and the resumable, distributed bucket batch sampler
* :mod:`train.flow` — flow-matching loss pieces (shifted timesteps, noising, velocity target)
* :mod:`train.trainer` — the accelerate training loop (both stages)
* :mod:`train.checkpointing` — atomic checkpoints, resume, export to the inference format
* :mod:`train.validation` — validation samples from cached conditioning
* :mod:`train.cli` — ``anytalker-train prepare | fit | export``

See docs/training.md.
"""
