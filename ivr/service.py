"""``ivr serve``: the controller and the API in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from ivr.api.app import create_app
from ivr.asterisk.instance import AsteriskInstance
from ivr.asterisk.provision import locate_asterisk
from ivr.controller import HotlineController, Readiness
from ivr.settings import Settings

log = logging.getLogger(__name__)


async def serve_async(settings: Settings) -> None:
    """Run controller and API until cancelled or the API server stops."""
    readiness = Readiness()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    instance = AsteriskInstance(locate_asterisk(), settings.asterisk.instance)
    state = instance.load_state()
    controller_task: asyncio.Task[None] | None = None
    controller: HotlineController | None = None
    if state is None:
        log.warning("no asterisk instance state; ARI stays unavailable",
                    extra={"instance": settings.asterisk.instance})
    else:
        controller = HotlineController(state.ari(), readiness)
        controller_task = asyncio.create_task(controller.run())
    config = uvicorn.Config(create_app(readiness), host=settings.api_host, port=settings.api_port,
                            log_level=settings.log_level.lower(), lifespan="off")
    server = uvicorn.Server(config)
    try:
        await server.serve()
    finally:
        if controller_task is not None:
            controller_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller_task
        if controller is not None:
            await controller.aclose()


def serve(settings: Settings) -> None:
    """Blocking entry point for ``ivr serve``."""
    asyncio.run(serve_async(settings))
