"""The summary table of a `scopecast-bench all` run: python3 table.py results.json.

One row per run with baselines or phases: max throughput of each system, the ratios, p50 / p99
at 50% load, and the broker's CPU per delivered event at 25% load divided by the same at max.
"""
import json, sys


def fmt(v):
    if v is None:
        return '-'
    if v >= 1e6:
        return f'{v / 1e6:.2f} M'
    if v >= 1e3:
        return f'{v / 1e3:.1f} k'
    return f'{v:.0f}'


d = json.load(open(sys.argv[1]))
print('| run | scopecast max/s | nats max/s | ceiling max/s | scopecast/nats | scopecast/ceiling | scopecast p50 / p99 at 50% (ms) | CPU per delivery, 25% / max |')
print('|---|---|---|---|---|---|---|---|')
for r in d['runs']:
    if r['scenario'] in ('idle', 'webhooks', 'cluster'):
        continue
    by = {s['system']: {p['phase']: p for p in s['phases']} for s in r['systems']}
    mx = {k: v.get('max', {}).get('throughput_per_s') for k, v in by.items()}
    sc = by.get('scopecast', {})
    lat = '-'
    cpu = '-'
    if '50%' in sc:
        l = sc['50%']['latency']
        lat = f"{l['p50_us'] / 1000:.1f} / {l['p99_us'] / 1000:.1f}"
    if '25%' in sc and 'max' in sc:
        per = lambda p: p['server']['cpu_pct'] / p['throughput_per_s']
        cpu = f"{per(sc['25%']) / per(sc['max']):.1f}x"
    ratio = lambda k: '-' if r['ratios'].get(k) is None else f"{r['ratios'][k]:.2f}"
    print(f"| {r['label']} | {fmt(mx.get('scopecast'))} | {fmt(mx.get('nats'))} | {fmt(mx.get('ceiling'))} | {ratio('scopecast_over_nats')} | {ratio('scopecast_over_ceiling')} | {lat} | {cpu} |")
