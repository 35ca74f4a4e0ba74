"""Watching generation: terminal animation and trajectory files (the HTML report comes later)."""

from textdiffusion.viz.terminal import TerminalAnimation
from textdiffusion.viz.trajectory import TrajectoryRecorder

__all__ = ["TerminalAnimation", "TrajectoryRecorder"]
