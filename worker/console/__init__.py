"""The dead-letter console (``ccsync console``): a web page where operators see what failed and
put it right, with the same functions and guarantees as ``ccsync dlq``.

``create_app`` builds the FastAPI application; ``run_console`` serves it with uvicorn. The
console never imports ``worker.runtime``: it reads and moves dead letters, it does not process
events.
"""

from worker.console.app import create_app
from worker.console.config import ConsoleConfig, console_config
from worker.console.server import run_console

__all__ = ["ConsoleConfig", "console_config", "create_app", "run_console"]
