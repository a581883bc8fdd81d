"""Summary of the interleaved write-window pairs: python3 summary.py DIR (DIR/n<N>/w<us>-r<pair>.json).

Per N and window: medians over the pairs of max throughput, broker CPU at 25% load, CPU per
delivery at 25% divided by the same at max, p99 at 50% load, and events per write at 25%; then
per pair the ratio window-on / window-off of CPU per delivery at 25% and of p99 at 50%, median
and min..max.
"""
import glob, json, os, statistics, sys


def measures(path):
    d = json.load(open(path))
    ph = {p['phase']: p for p in d['runs'][0]['systems'][0]['phases']}
    m, q, h = ph['max'], ph['25%'], ph['50%']
    cpd = lambda p: p['server']['cpu_pct'] / p['throughput_per_s']
    ev = lambda p: p['throughput_per_s'] * p['seconds'] / max(1, p['broker_deliver']['batches'])
    return {
        'max': m['throughput_per_s'],
        'cpu25': q['server']['cpu_pct'],
        'cpd25': cpd(q),
        'ratio': cpd(q) / cpd(m),
        'p99_50': h['latency']['p99_us'] / 1000,
        'ev25': ev(q),
    }


root = sys.argv[1]
for ndir in sorted(glob.glob(os.path.join(root, 'n*')), key=lambda p: int(p.rsplit('n', 1)[1])):
    runs = {}
    for f in glob.glob(os.path.join(ndir, 'w*-r*.json')):
        w, r = os.path.basename(f)[:-5].split('-')
        runs[(int(w[1:]), int(r[1:]))] = measures(f)
    print(f'## N = {os.path.basename(ndir)[1:]}')
    print('| window (us) | pairs | max/s | broker CPU at 25% | CPU per delivery, 25% / max | p99 at 50% (ms) | events per write at 25% |')
    print('|---|---|---|---|---|---|---|')
    windows = sorted({w for w, _ in runs})
    for w in windows:
        v = [x for (ww, _), x in runs.items() if ww == w]
        med = lambda k: statistics.median(x[k] for x in v)
        print(f"| {w} | {len(v)} | {med('max')/1e6:.2f} M | {med('cpu25'):.0f}% | {med('ratio'):.2f} | {med('p99_50'):.1f} | {med('ev25'):.1f} |")
    off, on = windows[0], windows[-1]
    pairs = sorted(r for (w, r) in runs if w == on and (off, r) in runs)
    for k, name in [('cpd25', 'CPU per delivery at 25%'), ('ratio', 'CPU per delivery 25%/max'), ('p99_50', 'p99 at 50%'), ('max', 'max throughput')]:
        rs = [runs[(on, r)][k] / runs[(off, r)][k] for r in pairs]
        print(f'- {name}, window {on} / window {off}, per pair: median {statistics.median(rs):.2f}, min..max {min(rs):.2f}..{max(rs):.2f} ({len(rs)} pairs)')
    print()
