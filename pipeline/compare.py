"""DVC stage `compare`: the epochs of every variant in one table, for the charts that compare them
(dvc.yaml's top-level `plots`: val top-1 and train loss against the epoch, one line per variant).
Params read: variants (whose tables it gathers, so a variant added to params.yaml joins the charts).

    python -m pipeline.compare      # plots/train/<variant>.tsv of every variant -> plots/curves.tsv
"""
import argparse
import csv
import sys
from pathlib import Path

from sgformer.cli import load_params_or_exit
from sgformer.io import write_tsv_atomic


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--params', default='params.yaml')
    p.add_argument('--epochs', default='plots/train', help="the train stages' tables, <epochs>/<variant>.tsv")
    p.add_argument('--out', default='plots/curves.tsv')
    return p.parse_args(argv)


def combine(tables: dict[str, list[dict[str, str]]]) -> list[dict[str, str]]:
    """The rows of every variant's table, in one table whose first column names the variant; a
    column that some variant's table lacks (`mfu` off a GPU) stays empty in its rows."""
    columns = dict.fromkeys(key for rows in tables.values() for row in rows for key in row)
    return [{'variant': name, **dict.fromkeys(columns, ''), **row} for name, rows in tables.items() for row in rows]


def main(argv=None) -> None:
    args = parse_args(argv)
    params = load_params_or_exit(args.params)
    tables = {}
    for name in params.variants:
        path = Path(args.epochs) / f'{name}.tsv'
        if not path.is_file():
            sys.exit(f'error: {path}: variant {name} has no table of epochs yet; run its train stage '
                     f'(dvc repro train@{name})')
        with path.open(newline='') as f:
            tables[name] = list(csv.DictReader(f, delimiter='\t'))
    rows = combine(tables)
    write_tsv_atomic(args.out, rows)
    print(f'{args.out}: {len(rows)} epochs of {len(tables)} variants ({", ".join(tables)})')


if __name__ == '__main__':
    main()
