package main

import (
	"context"
	"sync"
)

// listReader collapses concurrent reads of one list endpoint (GET
// /getUsers, /getEvents) into shared upstream calls, through one
// flightGroup, without ever going back in time: a read joins only a call
// that is sent after the read arrived. So a read sees every write
// acknowledged before it arrived, on this instance or any other, exactly
// as if it had made its own call.
//
// Reads are numbered in generations. A read joins the generation that has
// not been sent yet; when that generation's call takes its turn (at most
// one call of the list is in flight), reads arriving from then on join
// the next one, which waits for it. So each list has at most one call in
// flight and one waiting, however many reads there are. Nothing is kept
// once the last read of a generation has written its answer.
//
// Each call reserves the largest list in the answers pool before it is
// sent, and keeps what its answer takes until the last read that shares
// it has written it: one copy, counted once. A call that every reader has
// left finishes if it was sent, as lookups do, and is never sent if not.
type listReader struct {
	fetch  func(context.Context) ([]byte, error)
	memory *memoryPool // the answers pool
	calls  *flightGroup[uint64, listAnswer]

	mu       sync.Mutex                  // protects the fields below
	joining  uint64                      // the generation a read arriving now joins: not yet sent
	inFlight chan struct{}               // closed when the call in flight ends; nil if none is
	readers  map[uint64]int              // generation → reads not yet done with its answer
	held     map[uint64][]*memoryAccount // generation → what its answers hold, while it has readers
}

// newListReader returns the reader of the list that fetch asks for, the
// upstream call op, whose answers are counted in memory.
func newListReader(op string, fetch func(context.Context) ([]byte, error), memory *memoryPool) *listReader {
	return &listReader{
		fetch:   fetch,
		memory:  memory,
		calls:   newFlightGroup[uint64, listAnswer](leftCall(op)),
		readers: map[uint64]int{},
		held:    map[uint64][]*memoryAccount{},
	}
}

// listAnswer is a list as the upstream answered it, and the ETag of the
// answer that carries it, which its readers share.
type listAnswer struct {
	list []byte
	tag  answerTag
}

// pieces are the bytes of the answer: the list and a newline.
func (a listAnswer) pieces(write func([]byte)) {
	write(a.list)
	write(newline)
}

var newline = []byte{'\n'}

// Read returns the list as a call sent after Read was called found it,
// and done, which the caller must call once it has written the answer (or
// given up), whatever the error: it gives the shared answer's memory back
// when its last reader is done. When ctx ends first, Read returns at once.
func (l *listReader) Read(ctx context.Context) (answer listAnswer, done func(), err error) {
	l.mu.Lock()
	gen := l.joining
	l.readers[gen]++
	l.mu.Unlock()
	answer, err, _ = l.calls.Do(ctx, gen, l.call)
	return answer, func() { l.readerDone(gen) }, err
}

// readerDone counts one reader of generation gen as done with its answer.
func (l *listReader) readerDone(gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.readers[gen]--; l.readers[gen] > 0 {
		return
	}
	delete(l.readers, gen)
	for _, held := range l.held[gen] {
		held.close()
	}
	delete(l.held, gen)
}

// call is the shared call of generation gen: it waits for its turn,
// reserves the largest list, fetches, tags the answer, and leaves what it
// takes held for the readers still waiting for it.
func (l *listReader) call(ctx context.Context, gen uint64) (listAnswer, error) {
	turn, err := l.takeTurn(ctx, gen)
	if err != nil {
		return listAnswer{}, err
	}
	defer l.endTurn(turn)
	held := l.memory.account(0)
	if err := held.reserve(ctx, maxListBody); err != nil {
		held.close()
		return listAnswer{}, err
	}
	list, err := l.fetch(ctx)
	held.keep(int64(cap(list)))
	answer := listAnswer{list: list}
	if err == nil {
		answer.tag = tagOf(answer.pieces) // once, not once a reader
	}
	l.mu.Lock()
	if l.readers[gen] > 0 {
		// Usually the one answer of gen. A reader that took gen and was
		// slow to join may find its call finished and make another: both
		// answers are held until gen's last reader is done.
		l.held[gen], held = append(l.held[gen], held), nil
	}
	l.mu.Unlock()
	if held != nil {
		held.close() // every reader has left already
	}
	return answer, err
}

// takeTurn waits, under ctx, until no call of the list is in flight, then
// makes this one the call in flight, and reads arriving from now on join a
// later generation than gen. It returns what endTurn closes.
func (l *listReader) takeTurn(ctx context.Context, gen uint64) (chan struct{}, error) {
	for {
		l.mu.Lock()
		prev := l.inFlight
		if prev == nil {
			turn := make(chan struct{})
			l.inFlight, l.joining = turn, max(l.joining, gen+1)
			l.mu.Unlock()
			return turn, nil
		}
		l.mu.Unlock()
		select {
		case <-prev:
		case <-ctx.Done():
			return nil, ctx.Err() // every reader has left: nobody sees it
		}
	}
}

// endTurn ends the call in flight, turn, letting the next one go.
func (l *listReader) endTurn(turn chan struct{}) {
	l.mu.Lock()
	l.inFlight = nil
	l.mu.Unlock()
	close(turn)
}

// Close cancels the calls in flight and waits for their goroutines.
func (l *listReader) Close() { l.calls.Close() }
