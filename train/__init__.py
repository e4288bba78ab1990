"""AnyTalker two-stage training (imports anytalker_core, never ComfyUI)."""
