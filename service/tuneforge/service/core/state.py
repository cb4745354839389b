"""Everything a running service holds, created once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.service.core.config import Settings
from tuneforge.service.executors.base import Executor
from tuneforge.storage import ObjectStore


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    executor: Executor | None = None
