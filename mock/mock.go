// Package mock simulates the external Event API that eventgate fronts.
//
// A Handler serves the same five upstream routes as the real API, over
// whatever transport the caller chooses (httptest.NewServer, a real
// listener, or ServeHTTP called directly). Its misbehaviour is set through
// Options: a delay on every event lookup, connections dropped on the list
// endpoints, and a sliding-window capacity on writes past which it answers
// 503. The zero Options value is a well-behaved upstream with no delay, no
// failures and unlimited capacity; DefaultOptions gives the behaviour the
// README describes.
//
// A Handler is safe for concurrent use.
package mock

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Options sets how the mock behaves. Zero values mean "well-behaved".
type Options struct {
	// EventDelay is how long GET /getEventById/{id} waits before answering …
	EventDelay time.Duration
	// … except TailRate (0 to 1) of the time, when it waits TailDelay: a
	// heavy-tailed upstream, where a large fan-out meets slow lookups.
	TailRate  float64
	TailDelay time.Duration
	// FailRate is the fraction (0 to 1) of GET /getUsers and GET /getEvents
	// requests answered by dropping the connection.
	FailRate float64
	// AddCapacity is how many POST /addEvent requests are accepted per
	// AddWindow; 0 means unlimited.
	AddCapacity int
	// AddWindow is the sliding window AddCapacity applies to.
	AddWindow time.Duration
	// AddCapacityLater, from AddCapacityAt after New, takes AddCapacity's
	// place: an upstream whose capacity changes mid-run. AddCapacityAt 0
	// means never.
	AddCapacityLater int
	AddCapacityAt    time.Duration
	// AddHiccups is the fraction (0 to 1) of POST /addEvent requests
	// answered 503 whatever the capacity: an upstream with room that
	// refuses a write now and then (a deploy, a proxy in front of it).
	AddHiccups float64
	// RejectDelay is how long an over-capacity POST /addEvent waits before
	// its 503, as a loaded service would.
	RejectDelay time.Duration
	// Rand returns a float in [0, 1) and decides which requests fail;
	// nil means math/rand/v2.Float64.
	Rand func() float64
}

// DefaultOptions returns the behaviour the README describes: a 500 ms event
// delay, 5% dropped connections on the list endpoints, and at most 5 writes
// per sliding 10 s window, each refusal after 100 ms.
func DefaultOptions() Options {
	return Options{
		EventDelay:  500 * time.Millisecond,
		FailRate:    0.05,
		AddCapacity: 5,
		AddWindow:   10 * time.Second,
		RejectDelay: 100 * time.Millisecond,
	}
}

// User is a user of the Event API. Events lists the ids of the user's events
// in the order they were added.
type User struct {
	ID       string   `json:"id"`
	UserName string   `json:"userName"`
	Email    string   `json:"email"`
	Events   []string `json:"events"`
}

// Event is an event of the Event API.
type Event struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	UserID  string `json:"userId"`
	Details string `json:"details"`
}

// Handler is the simulated Event API. Create it with New.
type Handler struct {
	opts Options
	mux  *http.ServeMux

	mu       sync.Mutex // protects the fields below
	users    []*User    // in id order, for GET /getUsers
	events   []*Event   // in insertion order, for GET /getEvents
	byUser   map[string]*User
	byEvent  map[string]*Event
	accepted []time.Time // accepted writes within the capacity window, oldest first
	started  time.Time   // when New made it, for AddCapacityAt
}

// New returns a mock holding the seed data: users 1, 2 and 3 and events
// event-1 to event-4, with user 1 owning event-1 and event-3, user 2
// event-2 and user 3 event-4.
func New(opts Options) *Handler {
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	h := &Handler{
		started: time.Now(),
		opts:    opts,
		byUser:  map[string]*User{},
		byEvent: map[string]*Event{},
	}
	for _, u := range []User{
		{ID: "1", UserName: "alice", Email: "alice@example.com"},
		{ID: "2", UserName: "bob", Email: "bob@example.com"},
		{ID: "3", UserName: "carol", Email: "carol@example.com"},
	} {
		h.users = append(h.users, &u)
		h.byUser[u.ID] = &u
	}
	for _, e := range []Event{
		{ID: "event-1", Name: "Launch party", UserID: "1", Details: "Rooftop, 7pm"},
		{ID: "event-2", Name: "Team offsite", UserID: "2", Details: "Two days in the hills"},
		{ID: "event-3", Name: "Book club", UserID: "1", Details: "Chapter 4"},
		{ID: "event-4", Name: "Hackathon", UserID: "3", Details: "Bring a laptop"},
	} {
		h.store(e)
	}

	h.mux = http.NewServeMux()
	h.mux.HandleFunc("GET /getUsers", h.getUsers)
	h.mux.HandleFunc("GET /getEvents", h.getEvents)
	h.mux.HandleFunc("GET /getUserById/{id}", h.getUserByID)
	h.mux.HandleFunc("GET /getEventById/{id}", h.getEventByID)
	h.mux.HandleFunc("POST /addEvent", h.addEvent)
	return h
}

// ServeHTTP serves the Event API routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// User returns a copy of the user with the given id.
func (h *Handler) User(id string) (User, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	u, ok := h.byUser[id]
	if !ok {
		return User{}, false
	}
	c := *u
	c.Events = slices.Clone(u.Events)
	return c, true
}

// Event returns the event with the given id.
func (h *Handler) Event(id string) (Event, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.byEvent[id]
	if !ok {
		return Event{}, false
	}
	return *e, true
}

// EventCount returns how many events are stored.
func (h *Handler) EventCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

// store adds e and appends its id to its user's list, unless an event with
// that id exists already. It reports whether e was new. h.mu must be held,
// or h not yet shared.
func (h *Handler) store(e Event) bool {
	if _, ok := h.byEvent[e.ID]; ok {
		return false
	}
	h.events = append(h.events, &e)
	h.byEvent[e.ID] = &e
	if u, ok := h.byUser[e.UserID]; ok {
		u.Events = append(u.Events, e.ID)
	}
	return true
}

func (h *Handler) getUsers(w http.ResponseWriter, r *http.Request) {
	h.maybeDrop()
	h.mu.Lock()
	body, err := json.Marshal(h.users)
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, body, err)
}

func (h *Handler) getEvents(w http.ResponseWriter, r *http.Request) {
	h.maybeDrop()
	h.mu.Lock()
	body, err := json.Marshal(h.events)
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, body, err)
}

func (h *Handler) getUserByID(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	u, ok := h.byUser[r.PathValue("id")]
	var body []byte
	var err error
	if ok {
		body, err = json.Marshal(u)
	}
	h.mu.Unlock()
	if !ok {
		writeMessage(w, http.StatusNotFound, "User not found")
		return
	}
	writeJSON(w, http.StatusOK, body, err)
}

func (h *Handler) getEventByID(w http.ResponseWriter, r *http.Request) {
	delay := h.opts.EventDelay
	if h.opts.TailRate > 0 && h.opts.Rand() < h.opts.TailRate {
		delay = h.opts.TailDelay
	}
	if !wait(r, delay) {
		return
	}
	e, ok := h.Event(r.PathValue("id"))
	if !ok {
		writeMessage(w, http.StatusNotFound, "Event not found")
		return
	}
	body, err := json.Marshal(e)
	writeJSON(w, http.StatusOK, body, err)
}

func (h *Handler) addEvent(w http.ResponseWriter, r *http.Request) {
	var e Event
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&e); err != nil ||
		e.ID == "" || e.Name == "" || e.UserID == "" {
		writeMessage(w, http.StatusBadRequest, "id, name and userId are required")
		return
	}
	// The user is checked before the write counts against the capacity:
	// a write for an unknown user costs the others nothing.
	h.mu.Lock()
	_, known := h.byUser[e.UserID]
	h.mu.Unlock()
	if !known {
		writeMessage(w, http.StatusNotFound, "User not found")
		return
	}
	hiccup := h.opts.AddHiccups > 0 && h.opts.Rand() < h.opts.AddHiccups
	if hiccup || !h.admit(time.Now()) {
		if wait(r, h.opts.RejectDelay) {
			body := []byte(`{"success":false,"error":"Service temporarily unavailable","message":"Event API is experiencing high load"}`)
			writeJSON(w, http.StatusServiceUnavailable, body, nil)
		}
		return
	}
	h.mu.Lock()
	h.store(e)
	h.mu.Unlock()
	body, err := json.Marshal(map[string]any{"success": true, "id": e.ID})
	writeJSON(w, http.StatusOK, body, err)
}

// admit reports whether a write arriving at now fits the capacity window,
// and if so counts it.
func (h *Handler) admit(now time.Time) bool {
	capacity := h.opts.AddCapacity
	if h.opts.AddCapacityAt > 0 && now.Sub(h.started) >= h.opts.AddCapacityAt {
		capacity = h.opts.AddCapacityLater
	}
	if capacity <= 0 {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	cutoff := now.Add(-h.opts.AddWindow)
	i := 0
	for i < len(h.accepted) && !h.accepted[i].After(cutoff) {
		i++
	}
	h.accepted = h.accepted[i:]
	if len(h.accepted) >= capacity {
		return false
	}
	h.accepted = append(h.accepted, now)
	return true
}

// maybeDrop aborts the request, closing its connection without an answer,
// FailRate of the time.
func (h *Handler) maybeDrop() {
	if h.opts.FailRate > 0 && h.opts.Rand() < h.opts.FailRate {
		// ErrAbortHandler makes net/http close the connection silently.
		panic(http.ErrAbortHandler)
	}
}

// wait sleeps for d unless the client goes away first, which it reports by
// returning false.
func wait(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func writeMessage(w http.ResponseWriter, status int, msg string) {
	body, err := json.Marshal(map[string]string{"error": msg})
	writeJSON(w, status, body, err)
}

func writeJSON(w http.ResponseWriter, status int, body []byte, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
