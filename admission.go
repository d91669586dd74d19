package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"
)

// admission paces writes to what the upstream accepts, so that overload is
// met by waiting briefly instead of by failures. It knows only outcomes: a
// write was accepted, refused as overload (as the predicate it is given
// says), or ended otherwise, which says nothing about room.
//
// The upstream is modelled the way rate limits are built: at most n writes
// in any window of w (a sliding window; a token bucket of n refilled in w,
// and a fixed window of n per w, accept every pattern that model allows).
// The admission remembers when its own recent writes went, and lets a write
// go only when fewer than n of them fall in the last w. Both numbers are
// learnt from outcomes, with no configuration:
//
//   - Unpaced until overloads are more than hiccups: two in a row, or four
//     before twenty of the writes sent after the first are accepted. Then n
//     is the writes accepted before the first (they filled the window), and
//     w lies between the time they took and maxWindow.
//   - Every outcome then narrows w, given n: a write accepted when the n-th
//     last went d ago says w ≤ d; one refused says w > d. Writes go at the
//     upper bound (slowest, so safe); probes test the middle (bisection).
//   - An outcome that no w explains corrects n: accepted sooner than the
//     lower bound allows (or a probe accepted once w is known) means more
//     fit (n+1); refused later than the upper bound means fewer fit (n-1,
//     or n/2 if it happens again within a window, none accepted between;
//     probes grow it back).
//     A paced write refused keeps its slot: someone else took it.
//
// A probe is one write more than the model allows, sent after every write
// already given a turn (so that it never takes theirs). One at a time; a
// probe that is accepted sends the next at once (so a capacity 4× larger
// is reached as fast as writes come), and after a refusal the next waits
// probeEvery: at a steady capacity about one write per probeEvery is
// refused, and a capacity that grows is found within probeEvery. Twice
// that for a minute after a refusal the model could not explain: another
// writer (another instance) shares the upstream, and each probe costs more.
//
// A write that finds no room waits for its turn (first come, first served)
// if the turn comes within MaxWait, leaves its request's deadline the whole
// of reserve (its UPSTREAM_TIMEOUT), and fewer than MaxQueue wait; otherwise
// it is refused at once with a *pacingError saying when its turn would have
// come, and nothing is sent for it.
type admission struct {
	o admissionOptions

	mu            sync.Mutex
	slots         []turn        // the writes that went (or wait) within maxWindow, by time
	n             int           // writes per window; 0: not paced
	wLo, wHi      time.Duration // the window, as known: wLo < w ≤ wHi
	seq           uint64        // numbers the turns
	epoch         uint64        // bumped when turns given are void (the model shrank, or a Retry-After): they are taken again
	waiting       int           // writes waiting for their turn
	probing       bool          // a probe is out
	probeAt       time.Time     // no probe before
	shrunkAt      time.Time     // n last shrank: writes that went before say nothing more
	blockedUntil  time.Time     // the upstream's Retry-After
	lastAccepted  time.Time     // for AtFloor
	refusingSince time.Time     // the first overload since the last write accepted
	logged        float64       // the estimate last logged
	first         firstOverload // not paced yet: the model the first overload names
}

// firstOverload is what the first overload says, before pacing begins (n
// writes, given their turns over span, filled the window, when the write
// given turn was refused), and what the writes given their turns after it
// said since.
type firstOverload struct {
	n                 int
	span              time.Duration
	turn              turn
	refused, accepted int
	inARow            bool // the last of them was refused
}

// admissionOptions configure an admission; every field is required.
type admissionOptions struct {
	MaxWait  time.Duration // the longest a write waits for its turn
	MaxQueue int           // writes waiting at once, at most
	// Overloaded reports whether a write's error is the upstream saying it
	// has no room (a 503 or 429); RetryAfter returns how long it asked to
	// wait (0 if it did not say); Uncounted reports that the upstream did
	// not count the write against its capacity: it never reached it, or was
	// refused as the client's mistake (a 4xx), so that writes for unknown
	// users take no one's room.
	Overloaded func(error) bool
	RetryAfter func(error) time.Duration
	Uncounted  func(error) bool
	Jitter     func() float64 // in [0, 1), as math/rand/v2.Float64
	Logger     *slog.Logger   // one line when the estimate moves by more than 2×
	Metrics    *metrics
}

// The model's bounds. They are not tuned to any upstream: maxWindow is the
// longest limit window commonly used (a minute); the rest trade the
// overload answers a probe costs against how soon a change is found.
const (
	maxWindow       = time.Minute
	maxSlots        = 4096             // writes remembered: a window of more is modelled as a shorter one
	windowPrecision = 1.05             // bisect w until wHi/wLo is within this
	paceMargin      = 1.02             // writes go at 1.02 wHi, for clocks and networks that differ by a few ms
	probeEvery      = 10 * time.Second // after a refusal: the time to find a capacity that grew
)

// turn is a write's place: when it goes, and whether it is a probe.
type turn struct {
	at    time.Time
	seq   uint64
	epoch uint64 // the model's, when it was given
	probe bool
}

// pacingError refuses a write for which no turn comes in time.
type pacingError struct {
	RetryAfter time.Duration // when its turn would have come
}

func (e *pacingError) Error() string {
	return fmt.Sprintf("writes are paced to what the upstream accepts; the next turn is in %v", e.RetryAfter)
}

func newAdmission(o admissionOptions) *admission {
	return &admission{o: o}
}

// Admit waits for a write's turn, under ctx, and returns it; the caller
// sends the write and then calls Done with the turn and the write's error,
// whatever happened. reserve is the time the write needs after its turn. A
// write that cannot go in time is a *pacingError at once; one whose ctx
// ends while it waits gives its turn back and returns ctx's cause.
func (a *admission) Admit(ctx context.Context, reserve time.Duration) (turn, error) {
	now := time.Now()
	latest := now.Add(a.o.MaxWait)
	if dl, ok := ctx.Deadline(); ok && dl.Add(-reserve).Before(latest) {
		latest = dl.Add(-reserve)
	}
	a.mu.Lock()
	t, ok := a.book(now, latest)
	if ok && t.at.After(now) {
		a.waiting++
	}
	a.mu.Unlock()
	if !ok {
		a.o.Metrics.count(a.o.Metrics.admission, labels{"refused"})
		return t, &pacingError{RetryAfter: t.at.Sub(now)}
	}
	if !t.at.After(now) {
		a.o.Metrics.count(a.o.Metrics.admission, labels{"admitted"})
		a.o.Metrics.observe(a.o.Metrics.admitWait, labels{}, 0)
		return t, nil
	}
	a.o.Metrics.count(a.o.Metrics.admission, labels{"queued"})
	for {
		timer := time.NewTimer(time.Until(t.at))
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			a.mu.Lock()
			a.waiting--
			a.release(t)
			a.mu.Unlock()
			return t, context.Cause(ctx)
		}
		a.mu.Lock()
		if t.epoch == a.epoch {
			a.waiting--
			a.mu.Unlock()
			a.o.Metrics.observe(a.o.Metrics.admitWait, labels{}, time.Since(now))
			return t, nil
		}
		// The model shrank while it waited: its turn was given under the
		// old one. It takes a new turn, or is refused.
		a.release(t)
		t, ok = a.book(time.Now(), latest)
		if !ok {
			a.waiting--
			a.mu.Unlock()
			a.o.Metrics.count(a.o.Metrics.admission, labels{"refused"})
			return t, &pacingError{RetryAfter: time.Until(t.at)}
		}
		a.mu.Unlock()
	}
}

// book gives a write arriving at now the first turn the model allows, or a
// probe's, if that is no later than latest; otherwise it returns the turn
// it would have had, unbooked.
func (a *admission) book(now, latest time.Time) (turn, bool) {
	at := now
	if len(a.slots) > 0 && a.slots[len(a.slots)-1].at.After(at) {
		at = a.slots[len(a.slots)-1].at // first come, first served
	}
	if a.blockedUntil.After(at) {
		at = a.blockedUntil
	}
	probe := false
	if a.n > 0 {
		last := at
		if paced := a.freeAt(time.Duration(float64(a.wHi) * paceMargin)); paced.After(at) {
			at = paced
		}
		if at.After(now) && !a.probing && !now.Before(a.probeAt) {
			p := last
			if last.After(now) {
				p = last.Add(time.Millisecond) // after the last turn given, never before it
			}
			if a.bisecting() {
				mid := time.Duration(math.Sqrt(a.wLo.Seconds()*a.wHi.Seconds()) * float64(time.Second))
				p = maxTime(p, a.freeAt(mid))
			}
			if p.Before(at) && !p.After(latest) {
				at, probe = p, true
			}
		}
	}
	a.seq++
	t := turn{at: at, seq: a.seq, epoch: a.epoch, probe: probe}
	if at.After(latest) || at.After(now) && !probe && a.waiting >= a.o.MaxQueue {
		return t, false
	}
	a.probing = a.probing || probe
	i, _ := slices.BinarySearchFunc(a.slots, t, compareTurns)
	a.slots = slices.Insert(a.slots, i, t)
	if len(a.slots) > maxSlots {
		a.slots = slices.Delete(a.slots, 0, len(a.slots)-maxSlots)
	}
	return t, true
}

// freeAt returns when fewer than n of the slots fall within the last w.
func (a *admission) freeAt(w time.Duration) time.Time {
	if k := len(a.slots) - a.n; k >= 0 {
		return a.slots[k].at.Add(w)
	}
	return time.Time{}
}

func (a *admission) bisecting() bool {
	return a.wHi.Seconds() > a.wLo.Seconds()*windowPrecision
}

// release forgets a turn whose write was not stored upstream.
func (a *admission) release(t turn) {
	if i, found := slices.BinarySearchFunc(a.slots, t, compareTurns); found {
		a.slots = slices.Delete(a.slots, i, i+1)
	}
	if t.probe {
		a.probing = false
	}
}

func compareTurns(x, y turn) int {
	if c := x.at.Compare(y.at); c != 0 {
		return c
	}
	return cmp.Compare(x.seq, y.seq)
}

// Done records how the write given turn t ended: err nil if the upstream
// accepted it.
func (a *admission) Done(t turn, err error) {
	now := time.Now()
	overloaded := err != nil && a.o.Overloaded(err)
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.probe {
		a.probing = false
	}
	switch {
	case err != nil && a.o.Uncounted(err), overloaded && (t.probe || a.n == 0):
		a.release(t) // the upstream did not count it
	case overloaded:
		// A write the model allowed, refused: someone else (another
		// instance, another client) took its place. It keeps the slot, so
		// that the model paces as if it had gone.
	}
	if wait := a.o.RetryAfter(err); overloaded && wait > 0 && now.Add(wait).After(a.blockedUntil) {
		a.blockedUntil = now.Add(wait)
		a.epoch++ // no turn before it
	}
	cut := 0
	for cut < len(a.slots) && a.slots[cut].at.Before(now.Add(-maxWindow)) {
		cut++
	}
	a.slots = slices.Delete(a.slots, 0, cut)
	switch {
	case err == nil:
		a.lastAccepted, a.refusingSince = now, time.Time{}
		a.learn(t, true, false, now)
	case overloaded:
		again := !a.refusingSince.IsZero() // no write accepted since the last refusal
		if !again {
			a.refusingSince = now
		}
		a.learn(t, false, again, now)
	}
	if r := a.rate(); r > 2*a.logged || r < a.logged/2 {
		a.logged = r
		a.o.Logger.Info("write pacing changed", "writes_per_second", r, "writes", a.n, "window", a.wHi)
	}
}

// learn narrows the model with the outcome of the write given turn t.
func (a *admission) learn(t turn, accepted, again bool, now time.Time) {
	i, _ := slices.BinarySearchFunc(a.slots, t, compareTurns)
	before := a.slots[:i] // the writes that went before it
	if a.n == 0 {
		a.learnUnpaced(t, accepted, before)
		return
	}
	if !t.at.After(a.shrunkAt) {
		return // given its turn under the n before: nothing new
	}
	since := time.Duration(math.MaxInt64) // since the n-th last write before it
	if len(before) >= a.n {
		since = t.at.Sub(before[len(before)-a.n].at)
	}
	switch {
	case accepted && (since <= a.wLo || t.probe && !a.bisecting()):
		// n+1 fit in a window, or one more than the model allows fit once
		// the window is known: more fit than thought. (A probe that lands
		// where the bounds could explain it would otherwise only ever
		// narrow them, and a model of 500 per minute never grows.)
		a.n = min(a.n+1, maxSlots)
	case accepted:
		a.wHi = min(a.wHi, since)
	case since >= a.wHi:
		// Fewer fit than thought: one fewer, or half as many if it is the
		// second time within a window with no write accepted between (a
		// refusal among acceptances may be a hiccup: halving on each
		// would pace an upstream that refuses 5% at random to a trickle).
		if again && now.Sub(a.shrunkAt) < a.wHi {
			a.n = max(1, a.n/2)
		} else {
			a.n = max(1, a.n-1)
		}
		a.shrunkAt = now
		a.epoch++
	default:
		a.wLo = max(a.wLo, since)
	}
	switch {
	case accepted && t.probe || a.bisecting():
		a.probeAt = now // the next at once
	case t.probe || !accepted:
		wait := probeEvery
		if !a.shrunkAt.IsZero() && now.Sub(a.shrunkAt) < maxWindow {
			// A refusal the model could not explain within the last
			// minute: someone else writes too, and probes cost more.
			wait *= 2
		}
		// Less up to 20%, so that instances do not probe together.
		a.probeAt = now.Add(wait - time.Duration(0.2*a.o.Jitter()*float64(wait)))
	}
}

// learnUnpaced watches for overload before pacing begins. The first
// overload names the model (the writes given their turn before it filled
// the window); pacing from it begins at a second overload in a row, or at a
// fourth before hiccupAccepts of the writes sent after the first are
// accepted. An upstream that refuses a write in a hiccup (a deploy, a proxy)
// or at random takes most of the writes after it, and pacing it would
// refuse writes it takes; a limit refuses many (a sliding window, every one
// until a write leaves it; a token bucket offered twice its rate, every
// other one).
func (a *admission) learnUnpaced(t turn, accepted bool, before []turn) {
	f := &a.first
	switch {
	case f.n == 0:
		if !accepted && len(before) > 0 {
			*f = firstOverload{n: len(before), span: max(t.at.Sub(before[0].at), time.Millisecond), turn: t, refused: 1, inARow: true}
		}
	case compareTurns(t, f.turn) <= 0:
		// Given its turn before the first: it says nothing of it.
	case accepted:
		f.accepted++
		f.inARow = false
		if f.accepted >= hiccupAccepts {
			*f = firstOverload{} // the first was a hiccup
		}
	default:
		f.refused++
		if f.inARow || f.refused >= overloadRefusals {
			a.n, a.wLo, a.wHi = f.n, f.span, maxWindow // paced from now on: n never returns to 0
			return
		}
		f.inARow = true
	}
}

// Before pacing begins, overloadRefusals refusals before hiccupAccepts
// writes are accepted, or two in a row, are overload, not hiccups. Of an
// upstream that refuses 2% of writes at random, about 3% of the refusals
// begin pacing; TestPacingMeetsTheUpstreamsCapacity still serves 98% of
// its writes (51% when the first overload began it).
const (
	overloadRefusals = 4
	hiccupAccepts    = 20
)

// rate returns the estimate in writes per second; 0 when not paced.
func (a *admission) rate() float64 {
	if a.n == 0 {
		return 0
	}
	return float64(a.n) / a.wHi.Seconds()
}

// admissionSnapshot is the model, for /health and /metrics.
type admissionSnapshot struct {
	WritesPerSecond float64       // 0: not paced (no overload seen)
	Writes          int           // per Window
	Window          time.Duration // as known at most
	Waiting         int
}

// Snapshot returns the model now.
func (a *admission) Snapshot() admissionSnapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return admissionSnapshot{WritesPerSecond: a.rate(), Writes: a.n, Window: a.wHi, Waiting: a.waiting}
}

// AtFloor reports whether the upstream refuses even the slowest pace: it
// never accepted a write, or accepted none for maxWindow and has refused
// them for floorAfter (so that an idle minute is not taken for an outage).
// Its refusals are then the breaker's to count.
func (a *admission) AtFloor() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	return a.lastAccepted.IsZero() ||
		now.Sub(a.lastAccepted) > maxWindow && !a.refusingSince.IsZero() && now.Sub(a.refusingSince) >= floorAfter
}

// floorAfter is how long an upstream that accepted writes before must
// refuse them all before its refusals count as an outage.
const floorAfter = 10 * time.Second

func maxTime(x, y time.Time) time.Time {
	if x.After(y) {
		return x
	}
	return y
}
