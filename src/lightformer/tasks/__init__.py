"""Real data: text corpora (``text``) and task generators."""
