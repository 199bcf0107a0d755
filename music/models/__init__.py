"""Model resolution: the embedded offline default, Hugging Face ids and local paths."""

from music.models.embedded import EMBEDDED_SPECS, load_causal_lm, load_tokenizer, model_cache_dir, resolve_model_path

__all__ = ["EMBEDDED_SPECS", "load_causal_lm", "load_tokenizer", "model_cache_dir", "resolve_model_path"]
