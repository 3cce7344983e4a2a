"""Compiled loops (numba) for the steps whose numpy forms cost more than their arithmetic.

Each kernel is one pass over arrays its caller has laid out (sorted, coded, as integer keys): the
Cox partial likelihood and Harrell's C for `stats`, ranks and standardised values for `evidence`,
the per-time counts of threshold scans, and the event aggregations per account for `candidates`.
The callers prepare the arrays and are what the rest of nsm calls; the kernels release the GIL, so
the callers run them over chunks of rows, a thread per core (`by_rows`). Compiled code is cached on
disk, so only the first run after installing pays for compilation.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np


def workers() -> int:
    """Threads for work split over the cores (at most 4)."""
    return max(1, min(4, os.cpu_count() or 1))


def by_rows(kernel, *arrays: np.ndarray) -> list:
    """`kernel` (a kernel, or code that calls kernels) over chunks of rows, a chunk per core, in order:
    each (k, ...) array in `arrays` is cut into chunks of rows; one-dimensional arrays go whole to every
    chunk. The chunks are views, so a kernel can fill its chunk of an output array in place."""
    k = arrays[0].shape[0]
    size = max(1, -(-k // workers()))

    def chunk(i: int):
        return kernel(*(a[i : i + size] if a.ndim > 1 else a for a in arrays))

    with ThreadPoolExecutor(max_workers=workers()) as pool:
        return list(pool.map(chunk, range(0, max(1, k), size)))


def _jit(fn):
    """Compiled, releasing the GIL; cached on disk where numba finds a writable place (next to this
    file, else the user's cache directory), else compiled afresh in each run."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available for file ..."
        return numba.njit(nogil=True)(fn)


@_jit
def _add_weighted(x, w, lo, hi, s):
    """Adds to s (1 + p + p(p+1)/2: the sums of w, w x_a and w x_a x_c for c <= a) the terms of
    accounts lo..hi-1."""
    p = x.shape[1]
    for j in range(lo, hi):
        s[0] += w[j]
        at = 1 + p
        for a in range(p):
            wx = w[j] * x[j, a]
            s[1 + a] += wx
            for c in range(a + 1):
                s[at] += wx * x[j, c]
                at += 1


@_jit
def _efron_ties(d, r, dead, grad, hess, mean):
    """One block's d deaths: subtracts their Efron terms from grad (p,) and hess (p, p) (lower
    triangle), given the risk set's sums r and the deaths' sums `dead` (laid out as in
    `_add_weighted`); returns the sum of log phi."""
    p = len(mean)
    total = 0.0
    for lth in range(d):
        f = lth / d
        phi = r[0] - f * dead[0]
        total += math.log(phi)
        for a in range(p):
            mean[a] = (r[1 + a] - f * dead[1 + a]) / phi
            grad[a] -= mean[a]
        at = 1 + p
        for a in range(p):
            for c in range(a + 1):
                hess[a, c] -= (r[at] - f * dead[at]) / phi - mean[a] * mean[c]
                at += 1
    return total


@_jit
def efron_terms(X, models, beta, starts, deaths, fresh):
    """Cox partial log-likelihood with Efron's ties, its gradient and Hessian, for k models at once.

    X (K, n, p): each model's covariates over the same accounts, sorted by stratum, then by time
    descending, deaths first among equal times. Block b (accounts starts[b] to starts[b+1], the
    first deaths[b] of them deaths) is one (stratum, time); fresh[b] when it begins a stratum. The
    k models `models` (indexes into X) are evaluated at beta (k, p).
    Walking down the blocks, each joins the risk set; for the l-th of its d deaths (l = 0..d-1)
    Efron's risk set is R - (l/d) D, with R the risk-set sums of w, w x and w x x' (w = exp(x'beta))
    and D the same sums over the block's deaths.
    Returns ll (k,), gradient (k, p) and Hessian (k, p, p) of the log-likelihood.
    """
    _, n, p = X.shape
    k = len(models)
    ll, grad, hess = np.zeros(k), np.zeros((k, p)), np.zeros((k, p, p))
    eta, w, mean = np.empty(n), np.empty(n), np.empty(p)
    risk, dead = np.empty(1 + p + p * (p + 1) // 2), np.empty(1 + p + p * (p + 1) // 2)
    for m in range(k):
        x = X[models[m]]
        shift = -np.inf  # weights exp(eta - max eta): no overflow; the shift cancels in the ratios
        for i in range(n):
            eta[i] = 0.0
            for a in range(p):
                eta[i] += x[i, a] * beta[m, a]
            shift = max(shift, eta[i])
        for i in range(n):
            w[i] = math.exp(eta[i] - shift)
        for blk in range(len(deaths)):
            lo, hi, d = starts[blk], starts[blk + 1], deaths[blk]
            for f in range(len(risk)):
                risk[f] = 0.0 if fresh[blk] else risk[f]
                dead[f] = 0.0
            _add_weighted(x, w, lo, lo + d, dead)
            _add_weighted(x, w, lo + d, hi, risk)
            for f in range(len(risk)):
                risk[f] += dead[f]
            for j in range(lo, lo + d):
                ll[m] += eta[j] - shift
                for a in range(p):
                    grad[m, a] += x[j, a]
            ll[m] -= _efron_ties(d, risk, dead, grad[m], hess[m], mean)
        for a in range(p):
            for c in range(a):
                hess[m, c, a] = hess[m, a, c]
    return ll, grad, hess


@_jit
def efron_terms_1(X, models, beta, starts, deaths, fresh):
    """`efron_terms` for one covariate, X (K, n): the same sums in scalars, about twice as fast."""
    n = X.shape[1]
    k = len(models)
    ll, grad, hess = np.zeros(k), np.zeros((k, 1)), np.zeros((k, 1, 1))
    w = np.empty(n)
    for m in range(k):
        x, b = X[models[m]], beta[m, 0]
        shift = -np.inf
        for i in range(n):
            shift = max(shift, x[i] * b)
        for i in range(n):
            w[i] = math.exp(x[i] * b - shift)
        r0 = r1 = r2 = 0.0
        for blk in range(len(deaths)):
            if fresh[blk]:
                r0 = r1 = r2 = 0.0
            lo, dead, hi, d = starts[blk], starts[blk] + deaths[blk], starts[blk + 1], deaths[blk]
            d0 = d1 = d2 = 0.0
            for j in range(lo, dead):
                wx = w[j] * x[j]
                d0 += w[j]
                d1 += wx
                d2 += wx * x[j]
                grad[m, 0] += x[j]
                ll[m] += x[j] * b - shift
            for j in range(dead, hi):
                wx = w[j] * x[j]
                r0 += w[j]
                r1 += wx
                r2 += wx * x[j]
            r0, r1, r2 = r0 + d0, r1 + d1, r2 + d2
            for lth in range(d):
                f = lth / d
                phi = r0 - f * d0
                mu = (r1 - f * d1) / phi
                ll[m] -= math.log(phi)
                grad[m, 0] -= mu
                hess[m, 0, 0] -= (r2 - f * d2) / phi - mu * mu
    return ll, grad, hess


@_jit
def efron_means(x, beta, starts, deaths):
    """For a univariate Cox model (one stratum, blocks as in `efron_terms`) at `beta`: per death, the
    risk set's weighted mean of x, averaged over Efron's l = 0..d-1 within its block; NaN for the
    censored."""
    out = np.empty(len(x))
    shift = -np.inf
    for i in range(len(x)):
        out[i] = np.nan
        shift = max(shift, x[i] * beta)
    r0 = r1 = 0.0
    for blk in range(len(deaths)):
        lo, dead, hi, d = starts[blk], starts[blk] + deaths[blk], starts[blk + 1], deaths[blk]
        d0 = d1 = 0.0
        for j in range(lo, hi):
            w = math.exp(x[j] * beta - shift)
            r0 += w
            r1 += w * x[j]
            if j < dead:
                d0 += w
                d1 += w * x[j]
        total = 0.0
        for lth in range(d):
            f = lth / d
            total += (r1 - f * d1) / (r0 - f * d0)
        for j in range(lo, dead):
            out[j] = total / d
    return out


@_jit
def concordant_counts(codes, level, event):
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


@_jit
def rank_columns(values, order, codes, ranks):
    """Per row of `values` (k, n), given `order` (k, n) that sorts it (NaNs last): each value's dense
    code from 0 (equal values, equal codes; NaNs equal) and its average rank from 1 (ties share the
    mean of their ranks), written to `codes` (int64) and `ranks` (k, n)."""
    k, n = values.shape
    for c in range(k):
        col, at = values[c], order[c]
        code = 0
        i = 0
        while i < n:
            v = col[at[i]]
            j = i + 1
            while j < n and (col[at[j]] == v or (v != v and col[at[j]] != col[at[j]])):
                j += 1
            for q in range(i, j):
                codes[c, at[q]] = code
                ranks[c, at[q]] = (i + 1 + j) / 2  # the mean of ranks i+1..j
            code += 1
            i = j


@_jit
def standardise(values, out):
    """Per row of `values` (k, n): signed log1p, centred and scaled to sample SD 1 (ddof=1; a constant
    row is only centred), written to `out` (k, n)."""
    k, n = values.shape
    for c in range(k):
        total = 0.0
        for i in range(n):
            v = values[c, i]
            out[c, i] = math.copysign(math.log1p(abs(v)), v)
            total += out[c, i]
        mean = total / n
        ss = 0.0
        for i in range(n):
            ss += (out[c, i] - mean) ** 2
        sd = math.sqrt(ss / (n - 1)) if n > 1 else 0.0
        scale = 1.0 / sd if sd > 0 else 1.0
        for i in range(n):
            out[c, i] = (out[c, i] - mean) * scale


_M1, _M2, _M4, _H01 = (np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F),
                       np.uint64(0x0101010101010101))


@_jit
def _popcount(v):
    """Set bits of a uint64 (SWAR)."""
    v = v - ((v >> np.uint64(1)) & _M1)
    v = (v & _M2) + ((v >> np.uint64(2)) & _M2)
    v = (v + (v >> np.uint64(4))) & _M4
    return int((v * _H01) >> np.uint64(56))


@_jit
def _account_counts(account, renumber, code, source_of, counts):
    """Adds to counts the rows per account (`renumber`[account]) among the rows kept: renumber and
    source_of[code] >= 0."""
    for i in range(len(account)):
        a = renumber[account[i]]
        if a >= 0 and source_of[code[i]] >= 0:
            counts[a] += 1


_DAYS_PER_US = 1.0 / 86_400_000_000  # multiplied, as polars divides a column by a number: the same days


@_jit
def _place(account, renumber, code, source_of, fill, start, ts, user, user_ok, value, out_source, out_offset,
           out_user, out_ok, out_value):
    """Writes each kept row's source, offset in days (from its account's start) and columns at position
    fill[its account] of the outputs (advancing it)."""
    for i in range(len(account)):
        a, s = renumber[account[i]], source_of[code[i]]
        if a < 0 or s < 0:
            continue
        j = fill[a]
        fill[a] = j + 1
        out_source[j], out_offset[j] = s, (ts[i] - start[a]) * _DAYS_PER_US
        if len(user):
            out_user[j], out_ok[j] = user[i], user_ok[i]
        if len(value):
            out_value[j] = value[i]


def group_by_account(chunks, renumber, source_of, start):
    """The events' columns with each account's rows together, in their original order (a counting
    sort: each core counts its share of the rows per account, then places them). `chunks`: the
    events, a tuple of arrays (account, code, ts, user, user_ok, value) per chunk of rows in order (at
    least one; a chunk may be empty), as a frame read back in chunks holds them, so that no column is
    copied whole first. A row's account is renumber[account] and its source source_of[code]; rows
    where either is negative are left out, so that the caller needs no filtered copy of its columns.
    `start` (per account) and `ts` (per row) are times in microseconds; a row's offset is its time from
    its account's start, in days.
    Account a's rows are starts[a] to starts[a + 1]. Empty `user` and `value` arrays stay empty.
    Returns starts, the sources, the offsets, then user, user_ok and value."""
    n_accounts = len(start)
    pieces = _pieces(chunks, 8 * workers())
    rows = np.cumsum([0] + [len(p[0]) for p in pieces])
    cuts = np.searchsorted(rows, np.linspace(0, rows[-1], workers() + 1))  # pieces of ~equal rows per core
    shares = np.column_stack([cuts[:-1], cuts[1:]])

    def share_counts(share: np.ndarray) -> np.ndarray:
        counts = np.zeros(n_accounts, np.int64)
        for account, code, *_ in pieces[share[0, 0]:share[0, 1]]:
            _account_counts(account, renumber, code, source_of, counts)
        return counts[None]

    counts = np.vstack(by_rows(share_counts, shares))
    starts = np.r_[0, np.cumsum(counts.sum(axis=0))]
    fills = starts[:-1] + np.cumsum(counts, axis=0) - counts  # where each share's rows of each account begin
    kept = int(starts[-1])
    optional = range(3, 6)  # user, user_ok, value: empty in every chunk when the events have no such column
    there = [any(len(chunk[k]) for chunk in chunks) for k in optional]
    out = (np.empty(kept, source_of.dtype), np.empty(kept),
           *(np.empty(kept if present else 0, chunks[0][k].dtype) for k, present in zip(optional, there, strict=True)))

    def place(share: np.ndarray, fill: np.ndarray) -> None:
        for account, code, *columns in pieces[share[0, 0]:share[0, 1]]:
            _place(account, renumber, code, source_of, fill[0], start, *columns, *out)

    by_rows(place, shares, fills)
    return (starts, *out)


def _pieces(chunks: list[tuple[np.ndarray, ...]], at_least: int) -> list[tuple[np.ndarray, ...]]:
    """The chunks cut into `at_least` pieces or more (views), so that shares of them can be balanced."""
    total = sum(len(c[0]) for c in chunks)
    size = max(1, -(-total // at_least))
    return [tuple(a[lo:lo + size] if len(a) else a for a in c) for c in chunks for lo in range(0, len(c[0]), size)]


@_jit
def _set_bit(bits, cell, position):
    bits[cell, position >> 6] |= np.uint64(1) << np.uint64(position & 63)


@_jit
def _distinct_users(lo, hi, source, user, user_ok, out, table, tag):
    """Adds to out (1 + n_src,) the distinct users among rows lo..hi-1 (one account): all together in
    out[0], per source s in out[1 + s]. `table` is scratch: an open-addressing set of user keys
    (`keys`; `tags`: a slot belongs to this account when its tag is `tag`, so no clearing is needed
    between accounts; `seen`: per slot, a bitset of the sources seen with that user), of at least
    2 (hi - lo) slots."""
    keys, tags, seen = table
    bits = 1
    while (1 << bits) < 2 * (hi - lo):
        bits += 1
    last = (1 << bits) - 1
    for i in range(lo, hi):
        if not user_ok[i]:
            continue
        key = user[i]
        slot = np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))  # Fibonacci hashing
        while tags[slot] == tag and keys[slot] != key:
            slot = (slot + 1) & last
        if tags[slot] != tag:  # a user not seen yet in this account
            tags[slot], keys[slot] = tag, key
            seen[slot, :] = 0
            out[0] += 1.0
        c = source[i]
        bit = np.uint64(1) << np.uint64(c & 63)
        if not seen[slot, c >> 6] & bit:  # this user's first event of source c
            seen[slot, c >> 6] |= bit
            out[1 + c] += 1.0


@_jit
def event_tables(spans, source, offset, user, user_ok, value, n_days, count, days, weeks, first, users, total):
    """Per account (a row of `spans`: the first and after-last position of its rows, grouped as
    `group_by_account` leaves them) and per cell (column 0: all the account's events; column 1 + s:
    those of source s), from each event's `source` index and `offset` in days into the window, into
    the six (accounts, 1 + sources) outputs: rows, distinct days (int(offset)) and weeks (day // 7)
    with an event, the first offset (left as it is when none: the caller fills it with the value for
    none), distinct users (the `user` keys where `user_ok`; none when `user` is empty) and the sum of
    `value` (none when it is empty). The outputs other than `first` start at zero.

    One pass over each account's rows; its days and weeks are bits set in a small table cleared for
    each account, its users keys in a small hash set."""
    m, width = count.shape
    n_src = width - 1
    day_bits = np.zeros((width, (n_days + 63) // 64), np.uint64)
    week_bits = np.zeros((width, (n_days // 7 + 64) // 64), np.uint64)
    size = 1
    for a in range(m):
        while len(user) and size < 2 * (spans[a, 1] - spans[a, 0]):
            size *= 2  # the user set of the account with the most rows fits
    table = (np.empty(size, np.uint64), np.zeros(size, np.int64), np.empty((size, (n_src + 63) // 64), np.uint64))
    for a in range(m):
        lo, hi = spans[a, 0], spans[a, 1]
        day_bits[:] = 0
        week_bits[:] = 0
        for i in range(lo, hi):
            day = int(offset[i])  # offsets are >= 0: truncation is the floor
            for cell in (0, 1 + source[i]):
                count[a, cell] += 1.0
                first[a, cell] = min(first[a, cell], offset[i])
                _set_bit(day_bits, cell, day)
                _set_bit(week_bits, cell, day // 7)
                if len(value):
                    total[a, cell] += value[i]
        for cell in range(width):
            for word in range(day_bits.shape[1]):
                days[a, cell] += _popcount(day_bits[cell, word])
            for word in range(week_bits.shape[1]):
                weeks[a, cell] += _popcount(week_bits[cell, word])
        if len(user):
            _distinct_users(lo, hi, source, user, user_ok, users[a], table, a + 1)


@_jit
def time_group_counts(time_index, event, group, part, n_parts, n_times, n_groups):
    """Accounts leaving and events per part (`part` of each account: 0 to n_parts - 1, or -1 for none),
    distinct time (`time_index` of each account) and group code: two (n_parts, n_times, n_groups)
    arrays, in one pass."""
    leaving = np.zeros((n_parts, n_times, n_groups))
    events = np.zeros((n_parts, n_times, n_groups))
    for i in range(len(group)):
        p = part[i]
        if p >= 0:
            leaving[p, time_index[i], group[i]] += 1.0
            if event[i]:
                events[p, time_index[i], group[i]] += 1.0
    return leaving, events


def warm_up() -> None:
    """Load one compiled kernel: numba's first call in a process sets up its typing and target
    registries (~0.3 s, the same for any kernel), which a caller can run ahead on a spare thread."""
    normal_sf(np.zeros(1))


@_jit
def normal_sf(z):
    """P(Z > z) for a standard normal Z, elementwise over a 1-D array: erfc(z / sqrt 2) / 2, accurate
    in the far tail (p-values down to ~1e-300)."""
    out = np.empty(len(z))
    for i in range(len(z)):
        out[i] = 0.5 * math.erfc(z[i] / math.sqrt(2.0))
    return out


@_jit
def cut_levels(values, cuts):
    """How many of the ascending `cuts` each value reaches (value >= cut): a branch-free count, quicker
    than a binary search for the few cuts of a threshold scan."""
    out = np.zeros(len(values), np.int64)
    for i in range(len(values)):
        reached = 0
        for cut in cuts:
            reached += cut <= values[i]
        out[i] = reached if values[i] == values[i] else len(cuts)  # NaN sorts above every cut
    return out
