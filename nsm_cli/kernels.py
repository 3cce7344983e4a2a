"""Compiled loops (numba) for the statistics whose numpy forms cost more than their arithmetic.

Each kernel is one pass over accounts that `stats` has sorted once; `stats` prepares the arrays,
runs the kernels on a thread per core (they release the GIL) and is what the rest of nsm calls.
Compiled code is cached next to this file (or in the user's cache directory when that is
read-only), so only the first run after installing pays for compilation.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def efron_terms(X, models, beta, stratum, time, event):  # noqa: C901 - one pass, kept whole on purpose
    """Cox partial log-likelihood with Efron's ties, its gradient and Hessian, for k models at once.

    X (K, n, p): each model's covariates over the same accounts, sorted by stratum and then by time
    *descending*; `stratum` (int), `time` (float) and `event` (bool) in that order. The k models
    `models` (indexes into X) are evaluated at beta (k, p).
    Walking down the times, each block of equal (stratum, time) joins the risk set; for the l-th of
    its d deaths (l = 0..d-1) Efron's risk set is R - (l/d) D, with R the risk-set sums of w, w x
    and w x x' (w = exp(x'beta)) and D the same sums over the block's deaths.
    Returns ll (k,), gradient (k, p) and Hessian (k, p, p) of the log-likelihood.
    """
    _, n, p = X.shape
    k = len(models)
    ll = np.zeros(k)
    grad = np.zeros((k, p))
    hess = np.zeros((k, p, p))
    eta = np.empty(n)
    r1, d1, mean = np.empty(p), np.empty(p), np.empty(p)
    r2, d2 = np.empty((p, p)), np.empty((p, p))
    for m in range(k):
        x = X[models[m]]
        shift = -np.inf  # weights exp(eta - max eta): no overflow; the shift cancels in ratios
        for i in range(n):
            s = 0.0
            for a in range(p):
                s += x[i, a] * beta[m, a]
            eta[i] = s
            shift = max(shift, s)
        r0 = 0.0
        i = 0
        while i < n:
            if i == 0 or stratum[i] != stratum[i - 1]:
                r0 = 0.0
                r1[:] = 0.0
                r2[:, :] = 0.0
            d0 = 0.0
            d1[:] = 0.0
            d2[:, :] = 0.0
            deaths = 0
            j = i
            while j < n and time[j] == time[i] and stratum[j] == stratum[i]:
                w = math.exp(eta[j] - shift)
                r0 += w
                for a in range(p):
                    wx = w * x[j, a]
                    r1[a] += wx
                    for b in range(a + 1):
                        r2[a, b] += wx * x[j, b]
                if event[j]:
                    deaths += 1
                    d0 += w
                    ll[m] += eta[j] - shift
                    for a in range(p):
                        wx = w * x[j, a]
                        d1[a] += wx
                        grad[m, a] += x[j, a]
                        for b in range(a + 1):
                            d2[a, b] += wx * x[j, b]
                j += 1
            for lth in range(deaths):
                f = lth / deaths
                phi = r0 - f * d0
                ll[m] -= math.log(phi)
                for a in range(p):
                    mean[a] = (r1[a] - f * d1[a]) / phi
                    grad[m, a] -= mean[a]
                for a in range(p):
                    for b in range(a + 1):
                        hess[m, a, b] -= (r2[a, b] - f * d2[a, b]) / phi - mean[a] * mean[b]
            i = j
        for a in range(p):
            for b in range(a):
                hess[m, b, a] = hess[m, a, b]
    return ll, grad, hess


@_jit
def efron_means(x, beta, time, event):
    """For a univariate Cox model (no strata) at `beta`: per death, the risk set's weighted mean of
    x, averaged over Efron's l = 0..d-1 within its tie group. Accounts sorted by time descending;
    NaN for the censored."""
    n = len(x)
    out = np.full(n, np.nan)
    shift = -np.inf
    for i in range(n):
        shift = max(shift, beta * x[i])
    r0 = r1 = 0.0
    i = 0
    while i < n:
        d0 = d1 = 0.0
        deaths = 0
        j = i
        while j < n and time[j] == time[i]:
            w = math.exp(beta * x[j] - shift)
            r0 += w
            r1 += w * x[j]
            if event[j]:
                deaths += 1
                d0 += w
                d1 += w * x[j]
            j += 1
        total = 0.0
        for lth in range(deaths):
            f = lth / deaths
            total += (r1 - f * d1) / (r0 - f * d0)
        for q in range(i, j):
            if event[q]:
                out[q] = total / deaths
        i = j
    return out


@_jit
def concordant_counts(level, event, codes):
    """Harrell's comparable pairs counted with a Fenwick tree, O(n log n) per score column.

    Accounts sorted by `level` descending, where (i, j) is comparable exactly when i is an event and
    level[j] > level[i]; `codes` (k, n): each score column as dense integer codes in that order.
    Returns, per column, the comparable pairs whose partner j scores strictly higher, and those
    whose scores tie.
    """
    k, n = codes.shape
    greater = np.zeros(k, np.int64)
    ties = np.zeros(k, np.int64)
    for c in range(k):
        size = 0
        for i in range(n):
            size = max(size, codes[c, i] + 1)
        tree = np.zeros(size + 1, np.int64)  # Fenwick tree over codes: accounts of a higher level
        count = np.zeros(size, np.int64)
        inserted = 0
        i = 0
        while i < n:
            j = i
            while j < n and level[j] == level[i]:
                j += 1
            for q in range(i, j):
                if event[q]:
                    r = codes[c, q]
                    at_most = 0  # inserted with code <= r
                    pos = r + 1
                    while pos > 0:
                        at_most += tree[pos]
                        pos -= pos & -pos
                    greater[c] += inserted - at_most
                    ties[c] += count[r]
            for q in range(i, j):
                r = codes[c, q]
                count[r] += 1
                pos = r + 1
                while pos <= size:
                    tree[pos] += 1
                    pos += pos & -pos
            inserted += j - i
            i = j
    return greater, ties
