"""Clients a worker shares between jobs, created on first use inside the worker's loop.

Creating them lazily (not at import, not in a startup task that agents could overtake)
keeps them on the running event loop and lets every code path simply ask for them.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import asyncpg

from app.config import get_settings
from app.db import create_pool
from app.mailer import Mailer
from app.rendering import RenderPool
from app.storage import Storage, open_storage


class Resources:
    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._storage: Storage | None = None
        self._mailer: Mailer | None = None
        self._render_pool: RenderPool | None = None
        self._exit_stack = AsyncExitStack()
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(get_settings())
        return self._pool

    async def storage(self) -> Storage:
        if self._storage is None:
            async with self._lock:
                if self._storage is None:
                    storage = await self._exit_stack.enter_async_context(open_storage(get_settings()))
                    await storage.ensure_bucket()
                    self._storage = storage
        return self._storage

    def mailer(self) -> Mailer:
        if self._mailer is None:
            self._mailer = Mailer(get_settings())
        return self._mailer

    def render_pool(self) -> RenderPool:
        if self._render_pool is None:
            self._render_pool = RenderPool(get_settings().render_processes)
        return self._render_pool

    async def close(self) -> None:
        if self._render_pool is not None:
            self._render_pool.close()
            self._render_pool = None
        if self._mailer is not None:
            await self._mailer.close()
            self._mailer = None
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), timeout=10)
            self._pool = None
        self._storage = None
        await self._exit_stack.aclose()


resources = Resources()
