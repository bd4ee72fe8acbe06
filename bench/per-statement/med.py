import sys, statistics, collections
d = collections.defaultdict(lambda: ([], []))
loads = []
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) != 6 or "nan" in p:
        continue
    try:
        tps, us, load = float(p[3]), float(p[4]), float(p[5])
    except ValueError:
        continue
    d[(p[2], p[1])][0].append(tps); d[(p[2], p[1])][1].append(us); loads.append(load)
for (test, label), (tps, us) in sorted(d.items()):
    print(f"{test:<14} {label:<10} tps {statistics.median(tps):8.0f}  cpu/txn {statistics.median(us):7.1f} µs  (n={len(tps)}, tps {min(tps):.0f}-{max(tps):.0f}, cpu {min(us):.1f}-{max(us):.1f})")
print(f"1-min load during: median {statistics.median(loads):.1f}, max {max(loads):.1f}")
