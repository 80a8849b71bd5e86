"""The markdown table of `gpu_check.py`'s results: one row per measured quantity, ours and the
official code side by side, eager and compiled, with their ratios; and the errors to report."""
from common import fmt, markdown_table, times

COLUMNS = ('measurement', 'ours eager', 'ours compiled', 'official eager', 'official compiled', 'ratio')
QUANTITIES = (('train_img_s', 'bare train img/s', 1), ('infer_img_s', 'inference img/s', 1),
              ('train_peak_gib', 'bare train peak GiB', 2), ('infer_peak_gib', 'inference peak GiB', 2))


def row(label: str, cells: dict[str, str | None], ratio: str | None = None) -> list[str]:
    return [label, *(cells.get(c) or '—' for c in COLUMNS[1:-1]), ratio or '—']


def model_rows(label: str, entry: dict, with_ratio: bool = True) -> list[list[str]]:
    """Check 1 rows of one model: each quantity for ours / official, eager / compiled, and their ratios."""
    runs = {f'{source} {kind}': (entry.get(source) or {}).get(kind) or {}
            for source in ('ours', 'official') for kind in ('eager', 'compiled')}
    rows = []
    for key, what, digits in QUANTITIES:
        values = {column: r.get(key) for column, r in runs.items()}
        if any(v is not None for v in values.values()):
            ratios = [f'{kind} {r}' for kind in ('eager', 'compiled')
                      if (r := times(values[f'ours {kind}'], values[f'official {kind}']))]
            cells = {c: fmt(v, digits) for c, v in values.items() if v is not None}
            rows.append(row(f'{label} {what}', cells, ', '.join(ratios) if with_ratio else None))
    if compiled := {c: r for c, r in runs.items() if c.endswith('compiled') and r}:
        rows.append(row(f'{label} compile s (first train step / first inference call)', {
            c: 'failed (see JSON)' if 'error' in r else f"{fmt(r['compile_train_s'])} / {fmt(r['compile_infer_s'])}"
            for c, r in compiled.items()}))
    return rows


def check_rows(results: dict) -> list[list[str]]:
    """Rows of checks 2 to 5."""
    p, e, a, ops = (results.get(k) for k in ('production', 'eval', 'augment_ms', 'outside_model_ops'))
    rows = []
    if p:
        column = 'ours compiled' if p['compiled'] else 'ours eager'
        official = ((results.get('models', {}).get(p['model']) or {}).get('official') or {}).get('eager') or {}
        bare = p.get('bare_reference') or {}
        ratio = [f"{results['production_vs_bare']:.2f}x the bare {bare['kind']} step ({fmt(bare['img_s'])} img/s, "
                 'alternated)'] if bare else []
        if official:
            ratio.append(f"{times(p['img_s'], official['train_img_s'])} official eager")
        cells = {column: fmt(p['img_s']), 'official eager': fmt(official.get('train_img_s'))}
        rows.append(row(f"production step {p['model']} img/s ({p['augment']} augmentation)", cells, '; '.join(ratio)))
        if p['peak_gib'] is not None:
            rows.append(row(f"production step {p['model']} peak GiB",
                            {column: fmt(p['peak_gib'], 2), 'official eager': fmt(official.get('train_peak_gib'), 2)},
                            times(p['peak_gib'], official.get('train_peak_gib'))))
    if e:
        column = 'ours compiled' if e['ema_compiled'] else 'ours eager'
        rows.append(row(f"eval img/s, {e['model']} EMA model (measure_speed, batch {e['batch']})",
                        {column: fmt(e['ema_img_s']), 'official eager': fmt(e.get('official_eager_img_s'))},
                        times(e['ema_img_s'], e.get('official_eager_img_s'))))
    if a:
        rows.append(row(f"augmentation ms per batch of {a['batch']} at {a['img_size']} px (official / demo)",
                        {'ours eager': f"{fmt(a['official'], 2)} / {fmt(a['demo'], 2)}"}))
    for model, by_batch in (ops or {}).get('totals', {}).items():
        rows.append(row(f"outside-model ops per step, {model} (batch {' / '.join(by_batch)})",
                        {'ours eager': ' / '.join(map(str, by_batch.values()))}))
    return rows


def table(results: dict) -> str:
    rows = [r for name, entry in results.get('models', {}).items() for r in model_rows(name, entry)]
    if 'official_check' in results:
        rows += model_rows('sgformer_s @224 px batch 2 (code-path check, not a speed comparison)',
                           results['official_check'], with_ratio=False)
    return markdown_table(COLUMNS, rows + check_rows(results))


def measurement_errors(results: dict) -> list[tuple[str, str]]:
    """`(where, error)` of every implementation or compile that failed inside a section."""
    errors = [('production compile', results['production_compile_error'])] \
        if 'production_compile_error' in results else []
    entries = dict(results.get('models', {}), **{'code-path check': results.get('official_check') or {}})
    for name, entry in entries.items():
        for source, kinds in entry.items():
            if 'error' in kinds:
                errors.append((f'{source} {name}', kinds['error']))
            errors += [(f'{source} {name} {kind}', r['error']) for kind, r in kinds.items()
                       if isinstance(r, dict) and 'error' in r]
    return errors
