#!/usr/bin/env python3
"""CPU time per process group while a command runs: the command itself ("bench-client"),
its children ("replica:<comm>"), and every other process by name (postgres, redis-server,
...). Samples /proc every 0.1 s; Linux only. Usage: bench/cpu_by_process.py COMMAND ARGS..."""
import os, sys, subprocess, time, collections
HZ = os.sysconf('SC_CLK_TCK')
def snap():
    out = {}
    for p in os.listdir('/proc'):
        if not p.isdigit(): continue
        try:
            s = open(f'/proc/{p}/stat').read()
        except OSError: continue
        r = s.rfind(')'); comm = s[s.find('(')+1:r]; f = s[r+2:].split()
        out[int(p)] = (comm, int(f[1]), (int(f[11]) + int(f[12])) / HZ)
    return out
first = snap()
proc = subprocess.Popen(sys.argv[1:])
seen = {}  # pid -> (comm, ppid, first_cpu, last_cpu)
wall0 = time.time()
while proc.poll() is None:
    for pid, (comm, ppid, cpu) in snap().items():
        if pid in seen:
            c, pp, f0, _ = seen[pid]; seen[pid] = (c, pp, f0, cpu)
        else:
            base = first[pid][2] if pid in first else 0.0
            seen[pid] = (comm, ppid, base, cpu)
    time.sleep(0.1)
wall = time.time() - wall0
groups = collections.Counter()
for pid, (comm, ppid, f0, last) in seen.items():
    d = last - f0
    if d <= 0: continue
    if pid == proc.pid: g = 'bench-client'
    elif ppid == proc.pid: g = 'replica:' + comm
    else: g = comm
    groups[g] += d
print(f'wall {wall:.1f}s', file=sys.stderr)
for g, d in groups.most_common(12):
    print(f'{g:24s} {d:8.2f} cpu-s', file=sys.stderr)
sys.exit(proc.returncode)
