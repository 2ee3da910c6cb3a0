"""The Gradio demo: the page (:mod:`.page`) and the server guard that serves it with limits (:mod:`.guard`)."""

from .guard import launch
from .page import DemoHandler, build_demo

__all__ = ["DemoHandler", "build_demo", "launch"]
