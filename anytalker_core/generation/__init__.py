"""Generation: image + one voice per person + prompt -> video (the pipeline and long-clip windows)."""
