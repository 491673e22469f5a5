"""``ivr serve``: the controller and the API in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from ivr.api.app import create_app
from ivr.asterisk.instance import AriCredentials, AsteriskInstance
from ivr.asterisk.provision import locate_asterisk
from ivr.controller import HotlineController, Readiness
from ivr.settings import Settings

log = logging.getLogger(__name__)


def ari_credentials(settings: Settings) -> AriCredentials | None:
    """ARI from settings (remote PBX) or from the local instance that `ivr asterisk up` made."""
    if settings.ari is not None:
        return AriCredentials(settings.ari.url.rstrip("/"), settings.ari.user,
                              settings.ari.password.get_secret_value(), settings.ari.app)
    instance = AsteriskInstance(locate_asterisk(), settings.asterisk.instance)
    state = instance.load_state()
    return state.ari() if state is not None else None


async def serve_async(settings: Settings) -> None:
    """Run controller and API until cancelled or the API server stops."""
    readiness = Readiness()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    creds = ari_credentials(settings)
    controller_task: asyncio.Task[None] | None = None
    controller: HotlineController | None = None
    if creds is None:
        log.warning("no ARI configured and no local asterisk instance; ARI stays unavailable",
                    extra={"instance": settings.asterisk.instance})
    else:
        controller = HotlineController(creds, readiness)
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
