"""``train``: the arguments into settings, the job (``scratchcnn.training.job``), the lines it
reports, and the pictures of ``--plot``. Under ``mpiexec`` every rank runs it; only rank 0
speaks."""

from __future__ import annotations

import argparse
import os
import sys

from ..parallel import mpi as distributed
from ..parallel import supervise
from ..training.datasets import FOLDER, dataset_for
from ..training.job import train_run
from ..training.runs import RUN_DEFAULTS
from .output import error, say


def cmd_train(args: argparse.Namespace) -> int:
    if supervise.should_supervise():  # under mpich's mpiexec: see parallel/supervise.py
        return supervise.supervise()
    world = distributed.init()
    if world.size == 1:
        return _train(args, world)
    if world.rank > 0:  # only rank 0 speaks; errors still reach stderr (see run_rank)
        args.quiet = True
        sys.stdout = open(os.devnull, "w")  # for the life of this process
    return distributed.run_rank(world, lambda: _train(args, world), error)


def _train(args: argparse.Namespace, world: distributed.World) -> int:
    explicit = {k: getattr(args, k) for k in RUN_DEFAULTS if getattr(args, k) is not None}
    if args.data_dir is not None:
        explicit["data_dir"] = str(args.data_dir)
        if dataset_for(explicit) is not None:  # --data-dir PATH of class folders
            explicit["dataset"] = dataset_for(explicit)
        if explicit.get("dataset") == FOLDER:  # evaluate and --resume from anywhere
            explicit["data_dir"] = os.path.abspath(explicit["data_dir"])
    done = train_run(
        explicit,
        out=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        quiet=args.quiet,
        threads=args.threads,
        world=world,
        say=say,
    )
    if args.plot:
        from ..viz import plot_run

        for path in plot_run(done.out, data_dir=done.run["data_dir"]):
            say(f"picture:    {path}")
    return 0
