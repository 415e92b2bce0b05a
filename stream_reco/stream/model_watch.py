"""Which trained model the worker serves: the best valid artifact at start-up, and a hot swap when a newer one
appears under the models folder (or a corrupt named one is fixed). A corrupt artifact never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from stream_reco.core.recommender import Recommender
from stream_reco.model import artifact as model_artifact
from stream_reco.settings import Settings
from stream_reco.stream.store import WorkerStats

log = logging.getLogger(__name__)


class ModelWatch:
    """Picks, loads and hot-swaps the model of one worker's core (module docstring)."""

    def __init__(self, settings: Settings, recommender: Recommender, stats: WorkerStats,
                 catalog_ready: asyncio.Event) -> None:
        """`catalog_ready`: the watch swaps nothing before the catalogue is loaded (stream/catalog_feed.py)."""
        self.settings = settings
        self.recommender = recommender
        self.stats = stats
        self.catalog_ready = catalog_ready
        #: the artifact in use (None: content vectors only)
        self.model_path: Path | None = None
        self._picker: model_artifact.ArtifactPicker | None = None

    @property
    def picker(self) -> model_artifact.ArtifactPicker:
        """Which artifact to serve: skips corrupt folders (logged once, retried when they change), so `latest`
        means the newest valid one (model/artifact.py). Created on first use."""
        if self._picker is None:
            settings = self.settings
            self._picker = model_artifact.ArtifactPicker(settings.model, settings.data_dir, settings.embedding_dim)
        return self._picker

    def pick(self) -> tuple[Path, model_artifact.ModelArtifact] | None:
        """The best valid artifact when it is not the one in use, else None (file I/O: run it off the loop)."""
        return self.picker.pick(self.model_path)

    def swap(self, path: Path, art: model_artifact.ModelArtifact) -> bool:
        """Serve `art`; one the core refuses is remembered like a corrupt folder and the current model serves on."""
        try:
            self.recommender.load_model(art)
        except Exception as exc:  # core.items.CatalogError (a ValueError), or a bug: never stop the worker for it
            if not isinstance(exc, ValueError):
                log.exception("loading model %s failed", path)
            self.picker.reject(path, exc)
            return False
        finally:
            self.stats.counts["model_errors"] = self.picker.errors  # folders refused so far
        self.model_path = path
        self.stats.counts["model_swaps"] += 1
        log.info("model %s in use (%d items)", art.version, len(art.item_ids))
        return True

    def load_if_newer(self) -> bool:
        """Load the configured model at start-up, before the first event is processed.

        A corrupt configured model never stops the worker: it is logged (ERROR, naming the file and the
        problem) and skipped. With `latest` the newest valid artifact is served instead; a named path that is
        corrupt leaves the worker on content vectors until the folder is fixed, which the watcher notices.
        Refusing to start would turn one bad file into a crash loop and no lists at all.
        """
        picked = self.pick()
        if picked is None:
            self.stats.counts["model_errors"] = self.picker.errors
            return False
        return self.swap(*picked)

    async def watch_model(self) -> None:
        """Hot swap: a newer valid artifact under the models folder (or a fixed named path) replaces the model.

        A timer that raises stops the faust worker, so nothing escapes: a corrupt folder is logged once by the
        picker, and anything unexpected is logged here and tried again at the next tick.
        """
        if not self.catalog_ready.is_set():
            return
        try:
            # reading the artifact is file I/O: keep it off the event loop; the swap itself is one assignment
            picked = await asyncio.get_running_loop().run_in_executor(None, self.pick)
            if picked is not None and picked[0] != self.model_path:  # start-up may have loaded it meanwhile
                self.swap(*picked)
            self.stats.counts["model_errors"] = self.picker.errors
        except Exception:
            log.exception("model watch failed; the current model keeps serving")
