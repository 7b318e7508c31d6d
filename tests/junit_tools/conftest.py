"""The demo projects' tests fail on purpose: they are the tools' input, never collected."""

collect_ignore_glob = ["projects/*"]
