import json,glob,collections,statistics,sys
rows=collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1]+'/w*-r*.json')):
    w=f.split('/')[-1].split('-')[0]
    d=json.load(open(f))
    ph={p['phase']:p for p in d['runs'][0]['systems'][0]['phases']}
    m,q,h=ph['max'],ph['25%'],ph['50%']
    cpd=lambda p:p['server']['cpu_pct']/p['throughput_per_s']
    ratio=cpd(q)/cpd(m)
    ev=lambda p:p['throughput_per_s']*p['seconds']/max(1,p['broker_deliver']['batches'])
    rows[w].append((m['throughput_per_s'],q['server']['cpu_pct'],ratio,h['latency']['p99_us']/1000,q['latency']['p50_us']/1000,h['latency']['p50_us']/1000,ev(q),ev(h)))
for w,v in sorted(rows.items(),key=lambda x:int(x[0][1:])):
    med=[statistics.median(c) for c in zip(*v)]
    print(w,len(v),'max/s %.2fM cpu25 %.0f%% ratio %.2f p99@50 %.1fms p50@25 %.1f p50@50 %.1f ev/write@25 %.1f @50 %.1f'%(med[0]/1e6,*med[1:]))
    for x in v: print('   ', ['%.2f'%y for y in x])
