"""Send tracking that could not reach MLflow (the server was down when a stage ran) into its runs.

    python -m pipeline.tools.replay_tracking                     # every waiting session, to its own tracking URI
    python -m pipeline.tools.replay_tracking --tracking-uri http://mlflow.internal:5000   # the server moved

A stage that cannot reach MLflow keeps its params, tags, metrics (with their steps and times),
artifact paths, dataset inputs and model in `<tracking.offline_dir>/<session>/queue.jsonl` and
says so in one warning line (sgformer/tracking/journal.py describes the format). This command logs each
waiting session into the run it was logging into, or the run it continues, or a new run when
it never had one, oldest session first, then deletes it. Replaying again logs nothing twice. The
next stage that reaches the same tracking URI (evaluate, a rerun of train) does the same on its own.
Sessions whose stage still runs are left alone. Exits 1 when a session could not be replayed (MLflow
still out of reach, or refusing an operation): it stays for the next try.
"""
import argparse
import sys
from pathlib import Path

from sgformer.cli import load_params_or_exit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--params', default='params.yaml', help='tracking.offline_dir is read from it')
    p.add_argument('--offline-dir', help='the folder of waiting sessions (default: tracking.offline_dir)')
    p.add_argument('--tracking-uri', help='log into this MLflow instead of the URI each session recorded')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from sgformer.tracking import bound_http, offline_root, replay
    tracking = load_params_or_exit(args.params).tracking
    root = Path(args.offline_dir) if args.offline_dir else offline_root(tracking)
    bound_http(tracking.timeout_s)
    done, failed = replay(root, tracking_uri=args.tracking_uri)
    for session, run_id in done:
        print(f'replayed {session} into run {run_id}')
    for session, reason in failed:
        print(f'error: {root / session}: {reason}; it stays there', file=sys.stderr)
    if not done and not failed:
        print(f'nothing waits in {root}')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
