"""Reports of finished (or running) runs: PNG plots and a Markdown summary from metrics.jsonl."""

from apo_pipeline.report.summary import write_comparison, write_report

__all__ = ["write_comparison", "write_report"]
