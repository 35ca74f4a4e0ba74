"""Watching generation: terminal animation, trajectory files, the comparison report and the live page's assets."""

from importlib import resources

from textdiffusion.viz.terminal import TerminalAnimation
from textdiffusion.viz.trajectory import TrajectoryRecorder


def web_asset(name: str) -> str:
    """A file of ``textdiffusion/viz/web`` (package data: the pages' scripts, style sheet and HTML) as text."""
    return (resources.files("textdiffusion.viz") / "web" / name).read_text(encoding="utf-8")


__all__ = ["TerminalAnimation", "TrajectoryRecorder", "web_asset"]
