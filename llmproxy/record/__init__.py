"""Traffic recording: the daemon's sampled request log that ``llmproxy replay`` plays back."""
