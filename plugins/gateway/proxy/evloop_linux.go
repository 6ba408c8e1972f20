//go:build linux

package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// EventServer is the data plane's event-loop engine. A few loops (one per
// CPU by default), each a goroutine around its own epoll set, own the
// client connections and the upstream connections they use: a request is
// read, routed, screened, written upstream and its answer relayed without
// a goroutine switch, with the syscalls an event-driven server like nginx
// makes. Readiness is edge-triggered and a short read or write means the
// socket is drained (or full), so no read ends in EAGAIN. Profiles of the
// goroutine engine showed those extra reads and the park/unpark of the
// connection's goroutine around every wait as most of what it spent
// beyond the syscalls every proxy makes.
//
// The loops take the common case: HTTP/1.1 requests the fast parser
// accepts with a body of at most maxReplayBody, for services without an
// SLP filter that speak plain HTTP upstream. A connection that sends
// anything else (an upgrade, a chunked or large body, Expect, HTTP/1.0,
// unusual heads) is handed over, with what it sent, to Fallback (the
// goroutine engine), which serves it from then on.
type EventServer struct {
	GW                *Gateway
	Fallback          *Server
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	Logger            logrus.FieldLogger
	// Loops is the number of event loops (default GOMAXPROCS).
	Loops int

	mu       sync.Mutex
	ln       net.Listener
	loops    []*loop
	next     int
	shutting atomic.Bool
	wg       sync.WaitGroup
	handoffs atomic.Uint64
	pauses   atomic.Uint64
}

// evTestHook, when set (by tests only), sees each request a loop takes.
var evTestHook func(*http.Request)

// Handoffs counts the connections handed over to Fallback.
func (s *EventServer) Handoffs() uint64 { return s.handoffs.Load() }

// Limits of what a loop buffers for one connection.
const (
	evBufSize   = 16 << 10
	maxEvHead   = 64 << 10  // a request or response head
	maxEvOut    = 256 << 10 // answer bytes the client has not read: stop reading the upstream
	evSweepStep = 250 * time.Millisecond
	upIdleLimit = 90 * time.Second
)

// Serve accepts connections on ln until Shutdown.
func (s *EventServer) Serve(ln net.Listener) error {
	n := s.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	for len(s.loops) < n {
		l, err := newLoop(s)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.loops = append(s.loops, l)
		s.wg.Add(1)
		go l.run()
	}
	s.mu.Unlock()
	return acceptLoop(ln, &s.shutting, s.adopt)
}

// adopt gives an accepted connection to the next loop.
func (s *EventServer) adopt(c net.Conn) {
	remote := c.RemoteAddr().String()
	fd, err := detach(c)
	if err != nil {
		s.Fallback.ServeConn(c) // not a socket a loop can own
		return
	}
	s.mu.Lock()
	l := s.loops[s.next%len(s.loops)]
	s.next++
	s.mu.Unlock()
	if !l.post(func() { l.addClient(fd, remote) }) {
		unix.Close(fd)
	}
}

// detach takes the socket of c out of Go's netpoller: a duplicate of its
// descriptor (same socket, still non-blocking) is returned and c closed.
func detach(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	c.Close()
	return nfd, nil
}

// Shutdown stops accepting, closes idle connections, lets busy ones end
// their request and closes them; when ctx ends first, everything is
// closed at once.
func (s *EventServer) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	loops := s.loops
	s.mu.Unlock()
	for _, l := range loops {
		l.post(l.drain)
	}
	fb := make(chan error, 1)
	go func() { fb <- s.Fallback.Shutdown(ctx) }()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		for _, l := range loops {
			l.post(l.kill)
		}
		<-done
		err = ctx.Err()
	}
	if ferr := <-fb; err == nil {
		err = ferr
	}
	return err
}

// hupEvents mark a peer that closed its side (or a failed socket): the end
// is a state, not data, so no new edge announces it after a short read;
// reads then go on until they return 0 or EAGAIN (as nginx's pending_eof).
const hupEvents = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR

// sockState is what a loop knows of a socket's readiness. Events are
// edge-triggered, so a flag stays set until a read or write finds the
// socket drained or full.
type sockState struct {
	readable bool
	writable bool
	hup      bool // the peer hung up: read until EOF
}

func (s *sockState) note(ev uint32) {
	if ev&(unix.EPOLLIN|hupEvents) != 0 {
		s.readable = true
	}
	if ev&hupEvents != 0 {
		s.hup = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
}

// send writes p on fd until it is all sent or the socket is full (then
// writable is cleared: a short write means full, so no write ends in
// EAGAIN on the way). It returns the bytes sent and a failure, if any.
func (s *sockState) send(fd int, p []byte) (int, unix.Errno) {
	sent := 0
	for sent < len(p) {
		n, err := rawWrite(fd, p[sent:])
		switch {
		case err == 0 && n > 0:
			sent += n
			if sent < len(p) {
				s.writable = false
				return sent, 0
			}
		case err == unix.EAGAIN, err == 0: // (0 bytes written: taken as full)
			s.writable = false
			return sent, 0
		case err == unix.EINTR:
		default:
			return sent, err
		}
	}
	return sent, 0
}

// evHandler is what a descriptor in a loop's epoll set stands for.
type evHandler interface {
	event(ev uint32)
	abort(err error)
}

// loop is one event loop. Everything but post runs on its goroutine.
type loop struct {
	s      *EventServer
	epfd   int
	evfd   int // eventfd that wakes the loop for posted tasks
	events [128]unix.EpollEvent
	fds    []evHandler
	conns  map[*evClient]struct{}
	pools  map[*h1Pool]*evPool
	dials  int // dials in progress
	free   [][]byte
	rb     sliceWriter
	bw     *bufio.Writer
	// rr is the answer head being relayed: one per loop, not per
	// connection (it is ~2.3 KB and used only within answerHead)
	rr     rawResp
	swept  time.Time
	now    time.Time // read once per batch of events
	idleTO time.Duration
	headTO time.Duration

	draining bool
	killed   bool

	mu     sync.Mutex
	tasks  []func()
	woken  bool
	exited bool
}

func newLoop(s *EventServer) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	l := &loop{s: s, epfd: epfd, evfd: evfd, conns: map[*evClient]struct{}{}, pools: map[*h1Pool]*evPool{},
		idleTO: s.IdleTimeout, headTO: s.ReadHeaderTimeout}
	if l.idleTO <= 0 {
		l.idleTO = 120 * time.Second
	}
	if l.headTO <= 0 {
		l.headTO = 10 * time.Second
	}
	l.bw = bufio.NewWriterSize(&l.rb, 4096)
	return l, nil
}

// post runs f on the loop; false if the loop has ended.
func (l *loop) post(f func()) bool {
	l.mu.Lock()
	if l.exited {
		l.mu.Unlock()
		return false
	}
	l.tasks = append(l.tasks, f)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		unix.Write(l.evfd, one[:])
	}
	return true
}

func (l *loop) runTasks() {
	var b [8]byte
	unix.Read(l.evfd, b[:])
	l.mu.Lock()
	tasks := l.tasks
	l.tasks, l.woken = nil, false
	l.mu.Unlock()
	for _, f := range tasks {
		l.safely(nil, f)
	}
}

// The loop's socket calls never block, so they are made as raw syscalls:
// the Go scheduler does not see the loop's P enter a syscall, and sysmon
// has no P to take back and hand off after each one (with plain syscalls,
// sysmon woke every 20µs and the loop often had to wait for a P when the
// call returned: ~10% of the CPU time). Only epoll_wait, which may sleep,
// goes through the scheduler.
//
// recvfrom and sendto rather than read and write: on a socket they skip
// the VFS layer (measured: vfs_read, vfs_write and fdget_pos were ~3% of
// the loop's samples), and MSG_NOSIGNAL spares the process a SIGPIPE when
// the peer is gone.

func rawRead(fd int, p []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), 0, 0, 0)
	return int(n), e
}

func rawWrite(fd int, p []byte) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}

// poll returns the ready events, waiting up to wait when there are none.
//
// The wait is a plain epoll_wait, outside Go's netpoller. The price: while
// the loops keep every CPU busy, the rest of the process (the management
// API, health checks) waits for Go's network poll, which sysmon then runs
// only every 10ms (measured at saturation: management API median 6ms
// instead of ~1ms). Tried and measured: parking the loop in Go's netpoller
// (its epoll set nested in it) brought that back to ~1ms but cost ~5% of
// the throughput; parking there once a millisecond (the epoll set nested
// one-shot) cost 20% more CPU per request. engine: fast has no such delay.
func (l *loop) poll(wait time.Duration) (int, error) {
	return unix.EpollWait(l.epfd, l.events[:], int(wait/time.Millisecond))
}

func (l *loop) run() {
	defer l.s.wg.Done()
	l.swept = time.Now()
	for !l.serve() {
	}
}

// serve runs the loop until it ends (true) or something panicked outside
// an event handler (false: the loop goes on, its connections intact).
func (l *loop) serve() (ended bool) {
	defer func() {
		if p := recover(); p != nil {
			l.logf("event loop panicked: %v\n%s", p, debug.Stack())
		}
	}()
	yielded := time.Now()
	for {
		n, err := l.poll(evSweepStep)
		l.now = time.Now()
		if err != nil && err != unix.EINTR {
			l.logf("event loop stopped: epoll_wait: %v", err)
			l.kill()
		}
		for i := 0; i < n; i++ {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.evfd {
				l.runTasks()
				continue
			}
			if fd < len(l.fds) {
				if h := l.fds[fd]; h != nil {
					l.dispatch(h, ev.Events)
				}
			}
		}
		now := l.now
		if now.Sub(l.swept) >= evSweepStep {
			l.swept = now
			l.sweep(now)
		}
		if l.killed || l.draining && len(l.conns) == 0 && l.dials == 0 {
			l.exit()
			return true
		}
		if now.Sub(yielded) >= time.Millisecond {
			// a loop under load never blocks: let the rest of the
			// process (management API, timers, GC workers) in
			runtime.Gosched()
			yielded = now
		}
	}
}

// dispatch runs h's event handler; a panic aborts h (and what it is tied
// to) instead of killing the host.
func (l *loop) dispatch(h evHandler, ev uint32) {
	defer func() {
		if p := recover(); p != nil {
			l.logf("data plane connection panicked: %v\n%s", p, debug.Stack())
			h.abort(errors.New("internal error"))
		}
	}()
	h.event(ev)
}

func (l *loop) safely(h evHandler, f func()) {
	defer func() {
		if p := recover(); p != nil {
			l.logf("data plane task panicked: %v\n%s", p, debug.Stack())
			if h != nil {
				h.abort(errors.New("internal error"))
			}
		}
	}()
	f()
}

func (l *loop) logf(format string, args ...any) {
	if l.s.Logger != nil {
		l.s.Logger.Errorf(format, args...)
	}
}

// register adds fd to the epoll set, edge-triggered for everything.
func (l *loop) register(fd int, h evHandler) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	for fd >= len(l.fds) {
		l.fds = append(l.fds, make([]evHandler, len(l.fds)+64)...)
	}
	l.fds[fd] = h
	return nil
}

// forget closes fd (which takes it out of the epoll set: the loop holds
// the only descriptor of the socket).
func (l *loop) forget(fd int) {
	if fd < len(l.fds) {
		l.fds[fd] = nil
	}
	unix.Close(fd)
}

func (l *loop) getBuf() []byte {
	if n := len(l.free); n > 0 {
		b := l.free[n-1]
		l.free = l.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, evBufSize)
}

func (l *loop) putBuf(b []byte) {
	if cap(b) == evBufSize && len(l.free) < 256 {
		l.free = append(l.free, b[:0])
	}
}

func (l *loop) addClient(fd int, remote string) {
	if l.draining || l.killed {
		unix.Close(fd)
		return
	}
	c := &evClient{l: l, fd: fd, remote: remote, sockState: sockState{writable: true}, last: time.Now()}
	c.ip = remote
	if host, _, err := net.SplitHostPort(remote); err == nil {
		c.ip = host
	}
	c.ex.c = c
	if err := l.register(fd, c); err != nil {
		unix.Close(fd)
		l.logf("data plane: %v", err)
		return
	}
	l.conns[c] = struct{}{}
}

// drain: no new requests on idle connections; busy ones close after their
// answer.
func (l *loop) drain() {
	l.draining = true
	for c := range l.conns {
		if c.idle() {
			c.close()
		}
	}
}

func (l *loop) kill() {
	l.killed = true
	for c := range l.conns {
		c.abort(errors.New("shutting down"))
	}
}

func (l *loop) exit() {
	for _, p := range l.pools {
		for _, up := range p.idle {
			up.close()
		}
		p.idle = nil
	}
	l.mu.Lock()
	l.exited = true
	tasks := l.tasks
	l.tasks = nil
	l.mu.Unlock()
	for _, f := range tasks { // dial results and new connections: closed
		l.safely(nil, f)
	}
	unix.Close(l.epfd)
	unix.Close(l.evfd)
}

// sweep closes connections idle too long, heads that take too long, and
// pooled upstream connections of closed pools or idle too long, and ends
// attempts whose upstream is past its response_header_timeout.
func (l *loop) sweep(now time.Time) {
	for c := range l.conns {
		switch {
		case c.ex.awaitsAnswer(now):
			l.safely(c, c.ex.noAnswer)
		case c.idle() && now.Sub(c.last) > l.idleTO:
			c.close()
		case !c.ex.active && len(c.in) > 0 && !c.headSince.IsZero() && now.Sub(c.headSince) > l.headTO:
			c.close()
		}
	}
	for hp, p := range l.pools {
		keep := p.idle[:0]
		for _, up := range p.idle {
			if up.closed {
				continue // the upstream closed it while pooled
			}
			if hp.dead.Load() || now.Sub(up.since) > upIdleLimit {
				up.close()
			} else {
				keep = append(keep, up)
			}
		}
		clear(p.idle[len(keep):])
		p.idle = keep
		if hp.dead.Load() && len(p.idle) == 0 {
			delete(l.pools, hp)
		}
	}
}

type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// evPool is a loop's share of an upstream's keep-alive connections.
type evPool struct {
	hp   *h1Pool
	idle []*evUp
}

func (l *loop) pool(hp *h1Pool) *evPool {
	p := l.pools[hp]
	if p == nil {
		p = &evPool{hp: hp}
		l.pools[hp] = p
	}
	return p
}

func (p *evPool) take() *evUp {
	for n := len(p.idle); n > 0; n = len(p.idle) {
		up := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if !up.closed {
			return up
		}
	}
	return nil
}

func (p *evPool) put(up *evUp) {
	if p.hp.dead.Load() || len(p.idle) >= p.hp.maxIdle {
		up.close()
		return
	}
	up.since = time.Now()
	p.idle = append(p.idle, up)
}

// dial connects to the pool's upstream in a goroutine (dials are rare with
// keep-alive, and a dial may need DNS) and hands the socket to the loop.
func (l *loop) dial(p *evPool, ex *exchange) {
	l.dials++
	gen := ex.gen
	hp := p.hp
	go func() {
		fd := -1
		nc, err := hp.dialer.Dial("tcp", hp.addr)
		if err == nil {
			if fd, err = detach(nc); err != nil {
				nc.Close()
			}
		}
		if !l.post(func() { l.dials--; l.dialed(p, ex, gen, fd, err) }) && fd >= 0 {
			unix.Close(fd)
		}
	}()
}

func (l *loop) dialed(p *evPool, ex *exchange, gen uint64, fd int, err error) {
	current := ex.gen == gen && ex.active && !ex.c.closed
	if err != nil {
		if current {
			ex.transportErr(err, true)
		}
		return
	}
	if l.killed || l.exitedLocked() {
		unix.Close(fd)
		return
	}
	up := &evUp{l: l, fd: fd, pool: p, sockState: sockState{writable: true}}
	if err := l.register(fd, up); err != nil {
		unix.Close(fd)
		if current {
			ex.transportErr(err, true)
		}
		return
	}
	if !current {
		p.put(up)
		return
	}
	ex.send(up)
}

func (l *loop) exitedLocked() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.exited
}
