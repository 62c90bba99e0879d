"""Winograd vs im2col for 3x3 stride-1 Conv2d layers of several sizes, 1 thread, CPU time
(process_time, minimum of 7 calls, two interleaved rounds): the data behind
refdl.nn.conv.WINOGRAD_MIN_CHANNELS.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_winograd_select.py
"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np, time, sys, refdl
from refdl import nn
refdl.set_num_threads(1)
rng=np.random.default_rng(0)
def t(f,n=7):
    f(); ts=[]
    for _ in range(n):
        t0=time.process_time(); f(); ts.append(time.process_time()-t0)
    return min(ts)*1e3
import warnings
warnings.simplefilter("ignore")
print("load average", os.getloadavg())
def fwd(m, x):
    with refdl.no_grad():
        m(x)
for (N,C,H,O) in [(64,4,32,4),(64,8,32,8),(64,8,16,8),(64,16,32,16),(32,16,16,32),(64,32,16,32),(16,64,8,64),(64,3,32,16),(8,128,8,128),(64,128,8,128),(64,32,12,32),(64,64,16,64),(64,32,32,64)]:
    x=rng.standard_normal((N,C,H,H)).astype(np.float32)
    m=nn.Conv2d(C,O,3,padding=1); y=m(x); g=np.ones_like(y); m.backward(g)
    r={}
    for algo in ("winograd","im2col","winograd","im2col"):
        m.algorithm=algo
        r.setdefault(algo,[]).append((t(lambda: fwd(m, x)), t(lambda:(m(x),m.backward(g)))))
    w=min(a for a,_ in r["winograd"]), min(b for _,b in r["winograd"])
    i=min(a for a,_ in r["im2col"]), min(b for _,b in r["im2col"])
    print(f"({N},{C},{H},{H})->{O}: fwd wino {w[0]:.2f} im2col {i[0]:.2f} ({i[0]/w[0]:.2f}x)  fb wino {w[1]:.2f} im2col {i[1]:.2f} ({i[1]/w[1]:.2f}x)")
