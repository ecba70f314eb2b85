"""Built-in executors: how a population's training jobs are run."""

from __future__ import annotations

import genbench
from genbench.components import Executor


class LocalExecutor(Executor):
    """In-process, one job after another; each result is stored before the next starts."""

    name = "local"
    version = "1"

    def run(self, jobs, train, on_done):
        for group in train.groups(jobs):
            for job, result in zip(group, train.train_group(group)):
                on_done(job, result)


@genbench.hookimpl
def register_executors(register):
    register(LocalExecutor)
