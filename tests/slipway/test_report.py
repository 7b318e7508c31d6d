"""The stage table: a reused stage shows the time reusing it took now, and then."""

from __future__ import annotations

from slipway.report import PipelineReport, StageOutcome, summary_markdown


def test_cached_rows_show_the_time_now_with_the_original_beside():
    report = PipelineReport(
        app="demo",
        sha="a" * 40,
        branch="main",
        status="success",
        stages=(
            StageOutcome(
                "setup",
                "cached",
                0.12,
                "reused from an earlier run; 5 file(s) restored",
                original_seconds=41.5,
            ),
            StageOutcome("test", "passed", 3.0, "dependency cache node_modules: hit"),
        ),
    )
    markdown = summary_markdown(report)
    assert "| setup | ♻️ cached | 0.12 s (ran 41.50 s) | reused from an earlier run;" in markdown
    assert "| test | ✅ passed | 3.00 s | dependency cache node_modules: hit |" in markdown
