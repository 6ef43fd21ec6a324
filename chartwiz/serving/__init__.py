"""ChartWiz on vLLM: the offline engine behind `chartwiz infer --engine vllm` and the logits processor plugin."""
