"""The AnyTalker DiT: config, tensor layout, embeddings, norms, attention, projections, AFCA, the model,
fp8 quantisation and its checkpoint files."""
