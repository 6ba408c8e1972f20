//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/plugd/plugd/plugins/gateway/breaker"
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
	c := &evClient{l: l, fd: fd, remote: remote, writable: true, last: time.Now()}
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
// pooled upstream connections of closed pools or idle too long.
func (l *loop) sweep(now time.Time) {
	for c := range l.conns {
		switch {
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
	up := &evUp{l: l, fd: fd, pool: p, writable: true}
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

// evClient is a client connection owned by a loop.
type evClient struct {
	l          *loop
	fd         int
	remote, ip string
	in         []byte // received, not yet handled
	out        []byte // answer bytes; out[sent:] not yet written
	sent       int
	readable   bool
	writable   bool
	eof        bool // the client closed its side
	hup        bool // an event said so: read until EOF
	closeAfter bool
	closed     bool
	advancing  bool
	ar         *reqArena
	ex         exchange // the request in flight (ex.active), reused
	last       time.Time
	headSince  time.Time // when the head now arriving began (zero: none)
}

func (c *evClient) pending() int { return len(c.out) - c.sent }

func (c *evClient) idle() bool { return !c.ex.active && len(c.in) == 0 && c.pending() == 0 }

// hupEvents mark a peer that closed its side (or a failed socket): the end
// is a state, not data, so no new edge announces it after a short read;
// reads then go on until they return 0 or EAGAIN (as nginx's pending_eof).
const hupEvents = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR

func (c *evClient) event(ev uint32) {
	if ev&(unix.EPOLLIN|hupEvents) != 0 {
		c.readable = true
	}
	if ev&hupEvents != 0 {
		c.hup = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.writable = true
	}
	if c.writable && c.pending() > 0 && !c.flush() {
		return
	}
	c.advance()
}

// fill reads what the client sent into c.in; false if the connection
// failed (and was closed).
func (c *evClient) fill() bool {
	if c.in == nil {
		c.in = c.l.getBuf()
	}
	if cap(c.in)-len(c.in) < 512 {
		if cap(c.in) >= maxEvHead+maxReplayBody {
			c.readable = true // full: the handler decides
			return true
		}
		c.in = append(make([]byte, 0, 2*cap(c.in)), c.in...)
	}
	room := c.in[len(c.in):cap(c.in)]
	for {
		n, err := rawRead(c.fd, room)
		switch {
		case err == 0 && n > 0:
			c.in = c.in[:len(c.in)+n]
			if n < len(room) && !c.hup {
				c.readable = false // drained: the next data brings an event
			}
			return true
		case err == 0:
			c.eof, c.readable = true, false
			return true
		case err == unix.EAGAIN:
			c.readable = false
			return true
		case err == unix.EINTR:
			continue
		default:
			c.abort(os.NewSyscallError("read", err))
			return false
		}
	}
}

// flush writes pending answer bytes; false if the connection failed.
func (c *evClient) flush() bool {
	for c.pending() > 0 {
		n, err := rawWrite(c.fd, c.out[c.sent:])
		if err == 0 && n > 0 {
			c.sent += n
			if c.pending() > 0 {
				c.writable = false // the socket buffer is full: wait for an event
				return true
			}
			break
		}
		switch err {
		case unix.EAGAIN:
			c.writable = false
			return true
		case unix.EINTR:
			continue
		default:
			c.abort(os.NewSyscallError("write", err))
			return false
		}
	}
	c.out, c.sent = c.out[:0], 0
	if c.ex.active && c.ex.paused {
		c.ex.paused = false
		c.ex.readAnswer()
	}
	return true
}

// advance moves the connection on after an event: with a request in
// flight it only watches for the client leaving; else it handles the
// requests that have arrived, reading more as the socket allows.
func (c *evClient) advance() {
	if c.closed || c.advancing {
		return // an exchange ended inside advance: its loop goes on
	}
	c.advancing = true
	c.advance1()
	c.advancing = false
}

func (c *evClient) advance1() {
	if c.ex.active {
		if c.readable && len(c.in) < maxEvHead && !c.fill() {
			return
		}
		if c.eof {
			c.ex.clientGone()
		}
		return
	}
	for !c.closed && !c.ex.active {
		if c.pending() > 0 {
			return // the answers before go first
		}
		if c.closeAfter {
			c.close()
			return
		}
		i := bytes.Index(c.in, crlf2)
		if i < 0 {
			if len(c.in) >= maxEvHead {
				c.handoff()
				return
			}
			if c.readable {
				if !c.fill() {
					return
				}
				if c.readable || len(c.in) > 0 && bytes.Index(c.in, crlf2) >= 0 {
					continue
				}
			}
			if c.eof {
				c.close()
				return
			}
			if len(c.in) == 0 {
				c.headSince = time.Time{}
				c.release()
			} else if c.headSince.IsZero() {
				c.headSince = c.l.now
			}
			return
		}
		if !c.request(c.in[:i+4]) {
			return
		}
	}
}

// release gives an idle connection's buffers back to the loop.
func (c *evClient) release() {
	if len(c.in) == 0 && c.in != nil {
		c.l.putBuf(c.in)
		c.in = nil
	}
	if c.pending() == 0 && c.out != nil {
		c.l.putBuf(c.out)
		c.out, c.sent = nil, 0
	}
}

// request handles the request whose head is at the start of c.in. false:
// nothing more can happen now (more body to come, handed over, closed).
func (c *evClient) request(head []byte) bool {
	if c.ar == nil {
		c.ar = new(reqArena)
	}
	r := parseFastIn(c.ar, head, nil)
	if r == nil || r.ContentLength > maxReplayBody {
		c.handoff()
		return false
	}
	total := len(head) + int(r.ContentLength)
	if len(c.in) < total {
		if cap(c.in) < total {
			c.in = append(make([]byte, 0, total), c.in...)
		}
		for len(c.in) < total && c.readable {
			if !c.fill() {
				return false
			}
		}
		if len(c.in) >= total {
			return true // parsed again with the whole body
		}
		if c.eof {
			c.close()
		} else if c.headSince.IsZero() {
			c.headSince = c.l.now // the rest gets ReadHeaderTimeout too
		}
		return false
	}
	c.headSince = time.Time{}
	if evTestHook != nil {
		evTestHook(r)
	}
	g := c.l.s.GW
	start := c.l.now // when the request's last bytes were seen ready
	s, key, status, msg := g.route(r.URL.Path)
	if s == nil {
		g.metrics.unrouted.Add(1)
		c.consume(total)
		c.respond(r, status, msg, "")
		return true
	}
	sn := s.load()
	if sn.slp != "" || sn.scheme != "http" {
		c.handoff() // foreign code or http.Transport: the goroutine engine
		return false
	}
	r.RemoteAddr = c.remote
	if sn.keeps {
		c.ar = nil // a program may keep request values: next request, new memory
	}
	if status, msg, retryAfter := g.screen(r, s, sn, key, c.ip); status != 0 {
		c.consume(total)
		c.respond(r, status, msg, retryAfter)
		s.m.observe(status, time.Since(start))
		return true
	}
	o := g.outRequest(r, sn, key, c.ip, nil)
	if r.ContentLength > 0 {
		o.body = bytes.NewReader(c.in[len(head):total])
	} else {
		o.body = nil
	}
	ex := &c.ex
	ex.begin(r, s, sn, key, start)
	c.l.rb.b = ex.req[:0]
	c.l.bw.Reset(&c.l.rb)
	err := writeRequest(c.l.bw, &o, nil)
	ex.req, c.l.rb.b = c.l.rb.b, nil
	c.consume(total)
	if err != nil {
		ex.active = false
		c.respond(r, http.StatusBadRequest, err.Error(), "")
		s.m.observe(http.StatusBadRequest, time.Since(start))
		return true
	}
	if sn.cfg.LoadBalance.Strategy == "hash" {
		if sn.hashHdr != "" {
			ex.hashKey = r.Header.Get(sn.hashHdr)
		}
		if ex.hashKey == "" {
			ex.hashKey = c.ip
		}
	}
	ex.dispatch()
	return !c.ex.active
}

func (c *evClient) consume(n int) {
	c.in = c.in[:copy(c.in, c.in[n:])]
}

// respond answers with an error in the management API's envelope.
func (c *evClient) respond(r *http.Request, status int, msg, retryAfter string) {
	if r.Close || c.l.draining {
		c.closeAfter = true
	}
	c.out = appendError(c.outBuf(), c.l.now, status, msg, retryAfter, r.Method == http.MethodHead, c.closeAfter)
	c.last = c.l.now
	c.flush()
}

func (c *evClient) outBuf() []byte {
	if c.out == nil {
		c.out = c.l.getBuf()
	}
	return c.out
}

func appendError(b []byte, now time.Time, status int, msg, retryAfter string, head, closeAfter bool) []byte {
	body := make([]byte, 0, 64+len(msg))
	body = append(body, `{"message":`...)
	body = strconv.AppendQuote(body, msg)
	body = append(body, `,"code":`...)
	body = strconv.AppendInt(body, int64(status), 10)
	body = append(body, "}\n"...)
	b = append(b, statusLine(status)...)
	b = append(b, "Content-Type: application/json; charset=utf-8\r\n"...)
	if retryAfter != "" {
		b = append(b, "Retry-After: "...)
		b = append(b, retryAfter...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "Date: "...)
	b = append(b, httpDateAt(now)...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if !head {
		b = append(b, body...)
	}
	return b
}

// handoff gives the connection, with what it sent that was not handled,
// to the goroutine engine.
func (c *evClient) handoff() {
	l := c.l
	l.s.handoffs.Add(1)
	pre := append([]byte(nil), c.in...)
	fd := c.fd
	c.closed = true
	delete(l.conns, c)
	l.fds[fd] = nil
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	c.release()
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		l.logf("data plane: handing a connection over: %v", err)
		return
	}
	if len(pre) > 0 {
		nc = &prefixConn{Conn: nc, pre: pre}
	}
	l.s.Fallback.ServeConn(nc)
}

// prefixConn reads pre before what arrives on Conn.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (c *evClient) close() {
	if c.closed {
		return
	}
	if c.ex.active {
		c.ex.clientGone()
		return // clientGone closes c
	}
	c.closed = true
	delete(c.l.conns, c)
	c.l.forget(c.fd)
	c.in = c.in[:0]
	c.out, c.sent = c.out[:0], 0
	c.release()
}

func (c *evClient) abort(error) {
	c.out, c.sent = c.out[:0], 0
	c.close()
}

// exchange is one request of a client, from routing to the end of its
// answer, across attempts on upstream instances.
type exchange struct {
	c        *evClient
	active   bool
	gen      uint64 // counts requests; a dial result for another is moot
	s        *Service
	sn       *snapshot
	key      string
	method   string
	idem     bool
	reqClose bool
	start    time.Time
	req      []byte // the request as sent upstream
	hashKey  string
	skip     uint64
	attempts int
	retried  bool // resent on a new connection after a stale one

	u      *Upstream
	done   func(error)
	up     *evUp
	reused bool
	gotAny bool // answer bytes arrived on this attempt

	headSent bool
	status   int
	mode     bodyMode
	left     int64
	cs       chunkScan
	upClose  bool
	paused   bool
	rr       rawResp
}

type bodyMode uint8

const (
	bodyNone bodyMode = iota
	bodyLength
	bodyChunked
	bodyUntilClose
)

func (ex *exchange) begin(r *http.Request, s *Service, sn *snapshot, key string, start time.Time) {
	ex.gen++
	req := ex.req
	*ex = exchange{c: ex.c, gen: ex.gen, active: true, s: s, sn: sn, key: key, method: r.Method,
		idem: idempotent(r.Method), reqClose: r.Close, start: start, req: req}
}

// dispatch picks an instance and sends the request to it.
func (ex *exchange) dispatch() {
	sn := ex.sn
	for {
		idx := sn.bal.Pick(ex.hashKey, ex.skip)
		if idx < 0 {
			ex.fail(http.StatusServiceUnavailable, "service "+strconv.Quote(ex.key)+" has no available instance")
			return
		}
		if idx < 64 {
			ex.skip |= 1 << uint(idx)
		}
		u := sn.ups[idx]
		done, err := u.admit()
		if err != nil { // opened or half-open quota used since Pick
			continue
		}
		u.inflight.Add(1)
		ex.u, ex.done, ex.retried = u, done, false
		ex.attempts++
		ex.connect(false)
		return
	}
}

func (ex *exchange) connect(fresh bool) {
	l := ex.c.l
	p := l.pool(ex.u.pool.Load())
	if !fresh {
		if up := p.take(); up != nil {
			ex.reused = true
			ex.send(up)
			return
		}
	}
	ex.reused = false
	l.dial(p, ex)
}

func (ex *exchange) send(up *evUp) {
	ex.up, ex.gotAny = up, false
	up.ex = ex
	up.out, up.sent = ex.req, 0
	if up.in == nil {
		up.in = ex.c.l.getBuf()
	}
	up.flush()
}

// fail ends the exchange with an error answer (nothing was sent yet).
func (ex *exchange) fail(status int, msg string) {
	c := ex.c
	ex.active = false
	c.respond(&http.Request{Method: ex.method, Close: ex.reqClose}, status, msg, "")
	ex.s.m.observe(status, time.Since(ex.start))
	c.last = c.l.now
	c.advance()
}

// transportErr handles a failed attempt: the upstream connection failed
// (dial, write, reset, closed before the answer ended).
func (ex *exchange) transportErr(err error, dialErr bool) {
	if up := ex.up; up != nil {
		up.ex, ex.up = nil, nil
		up.close()
	}
	if ex.headSent {
		// the client's answer is cut off: its connection must close
		ex.u.inflight.Add(-1)
		ex.s.m.observe(ex.status, time.Since(ex.start))
		ex.active = false
		ex.c.abort(err)
		return
	}
	if ex.reused && !ex.gotAny && !ex.retried && !dialErr {
		// the upstream closed the kept-alive connection while it was idle
		ex.retried = true
		ex.connect(true)
		return
	}
	ex.u.inflight.Add(-1)
	ex.u.report(ex.done, err)
	if ex.attempts <= ex.sn.retries && (dialErr || ex.idem) {
		ex.s.m.retries.Add(1)
		ex.dispatch()
		return
	}
	ex.fail(http.StatusBadGateway, "upstream "+ex.u.Inst.ID+" of service "+strconv.Quote(ex.key)+" failed: "+err.Error())
}

// clientGone: the client closed or reset its connection while the
// answer was pending. The upstream connection is closed, which cancels
// the request there; the request counts as 499, as nginx counts it.
func (ex *exchange) clientGone() {
	c := ex.c
	if up := ex.up; up != nil {
		up.ex, ex.up = nil, nil
		up.close()
	}
	if ex.u != nil {
		ex.u.inflight.Add(-1)
		if !ex.headSent {
			ex.u.report(ex.done, breaker.ErrExcluded)
		}
	}
	status := ex.status
	if !ex.headSent {
		status = 499
	}
	ex.s.m.observe(status, time.Since(ex.start))
	ex.active = false
	ex.gen++
	c.close()
}

// readAnswer reads and relays what the upstream sent.
func (ex *exchange) readAnswer() {
	for ex.active && ex.up != nil && ex.up.readable && !ex.paused {
		up := ex.up
		if cap(up.in)-len(up.in) < 512 {
			if ex.headSent || cap(up.in) >= maxEvHead {
				ex.relay() // make room
				if !ex.active || ex.up != up {
					return // the exchange moved on
				}
				if cap(up.in)-len(up.in) < 512 {
					ex.transportErr(errors.New("upstream answer head too large"), false)
					return
				}
			} else {
				up.in = append(make([]byte, 0, 2*cap(up.in)), up.in...)
			}
		}
		room := up.in[len(up.in):cap(up.in)]
		n, err := rawRead(up.fd, room)
		switch {
		case err == 0 && n > 0:
			up.in = up.in[:len(up.in)+n]
			if n < len(room) && !up.hup {
				up.readable = false
			}
			ex.gotAny = true
			ex.relay()
		case err == 0: // EOF
			up.readable = false
			if ex.headSent && ex.mode == bodyUntilClose {
				ex.upClose = true
				ex.finish()
				return
			}
			if ex.gotAny && !ex.headSent {
				ex.transportErr(io.ErrUnexpectedEOF, false)
			} else {
				ex.transportErr(io.EOF, false)
			}
			return
		case err == unix.EAGAIN:
			up.readable = false
		case err == unix.EINTR:
		default:
			ex.transportErr(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}, false)
			return
		}
	}
}

// relay turns what the upstream sent into the client's answer: the head
// once it is complete, then the body as it arrives.
func (ex *exchange) relay() {
	up, c := ex.up, ex.c
	for !ex.headSent {
		i := bytes.Index(up.in, crlf2)
		if i < 0 {
			return
		}
		if !ex.answerHead(up.in[:i+4]) {
			return
		}
	}
	if len(up.in) > 0 {
		switch ex.mode {
		case bodyLength:
			k := int(min(int64(len(up.in)), ex.left))
			c.out = append(c.out, up.in[:k]...)
			ex.left -= int64(k)
			up.consume(k)
			if ex.left == 0 && len(up.in) > 0 {
				ex.upClose = true // bytes beyond the answer: do not reuse
				up.in = up.in[:0]
			}
		case bodyChunked:
			n, done, err := ex.cs.scan(up.in)
			if err != nil {
				ex.transportErr(err, false)
				return
			}
			c.out = append(c.out, up.in[:n]...)
			up.consume(n)
			if done {
				ex.left = 0
				if len(up.in) > 0 {
					ex.upClose = true
					up.in = up.in[:0]
				}
			}
		case bodyUntilClose:
			c.out = append(c.out, up.in...)
			up.in = up.in[:0]
		default:
			ex.upClose = true // an answer without body has no bytes after its head
			up.in = up.in[:0]
		}
	}
	if ex.mode != bodyUntilClose && ex.left == 0 {
		ex.finish()
		return
	}
	if !c.flush() {
		return
	}
	if c.pending() > maxEvOut {
		ex.paused = true // until the client has read it (see flush)
		c.l.s.pauses.Add(1)
	}
}

// answerHead handles a complete answer head: 1xx are dropped, a 502, 503
// or 504 may be retried, else the head goes to the client. false: the
// exchange moved on (retried, failed) or waits for the next head.
func (ex *exchange) answerHead(head []byte) bool {
	up, c := ex.up, ex.c
	rr := &ex.rr
	var resp *http.Response
	fast := parseRespFast(head, ex.method, rr)
	status := rr.status
	if !fast {
		var err error
		resp, err = http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(head), len(head)), &http.Request{Method: ex.method})
		if err != nil {
			ex.transportErr(errors.New("malformed answer: "+err.Error()), false)
			return false
		}
		status = resp.StatusCode
		if status >= 100 && status < 200 {
			if status == http.StatusSwitchingProtocols {
				ex.transportErr(errors.New("malformed answer: 101 to a request without upgrade"), false)
				return false
			}
			up.consume(len(head)) // 100 Continue and friends: the answer follows
			return true
		}
	}
	if status >= 500 {
		ex.u.report(ex.done, errUpstream5xx)
		if ex.attempts <= ex.sn.retries && ex.idem && (status == 502 || status == 503 || status == 504) {
			up.ex, ex.up = nil, nil
			up.close()
			ex.u.inflight.Add(-1)
			ex.s.m.retries.Add(1)
			ex.dispatch()
			return false
		}
	} else {
		ex.u.report(ex.done, nil)
	}
	ex.status, ex.headSent = status, true
	noBody := ex.method == http.MethodHead || status == http.StatusNoContent || status == http.StatusNotModified
	if ex.reqClose || c.l.draining {
		c.closeAfter = true
	}
	b := c.outBuf()
	if fast {
		ex.upClose = rr.close
		ex.mode, ex.left = bodyLength, rr.cl
		if noBody || rr.cl == 0 {
			ex.mode, ex.left = bodyNone, 0
		}
		b = append(b, statusLine(status)...)
		for _, kv := range rr.lines[:rr.n] {
			b = append(b, kv[0]...)
			b = append(b, ": "...)
			b = append(b, kv[1]...)
			b = append(b, "\r\n"...)
		}
		b = ex.endHead(b, !rr.date, false)
	} else {
		ex.upClose = resp.Close
		switch {
		case noBody:
			ex.mode, ex.left = bodyNone, 0
		case len(resp.TransferEncoding) > 0:
			ex.mode, ex.left = bodyChunked, 1 // scanned to its end
		case resp.ContentLength >= 0:
			ex.mode, ex.left = bodyLength, resp.ContentLength
			if ex.left == 0 {
				ex.mode = bodyNone
			}
		default:
			ex.mode = bodyUntilClose
			ex.upClose, c.closeAfter = true, true
		}
		removeHop(resp.Header)
		if ex.mode == bodyChunked && len(resp.Trailer) > 0 {
			names := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				names = append(names, k)
			}
			resp.Header["Trailer"] = []string{strings.Join(names, ", ")}
		}
		b = append(b, statusLine(status)...)
		for k, vv := range resp.Header {
			for _, v := range vv {
				if safeHeaderValue(v) {
					b = append(b, k...)
					b = append(b, ": "...)
					b = append(b, v...)
					b = append(b, "\r\n"...)
				}
			}
		}
		_, hasDate := resp.Header["Date"]
		b = ex.endHead(b, !hasDate, ex.mode == bodyChunked)
	}
	c.out = b
	up.consume(len(head))
	return true
}

// endHead ends an answer head as fastWriter.endHead does.
func (ex *exchange) endHead(b []byte, date, chunked bool) []byte {
	if date {
		b = append(b, "Date: "...)
		b = append(b, httpDateAt(ex.c.l.now)...)
		b = append(b, "\r\n"...)
	}
	if chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if ex.c.closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}

// finish ends a relayed answer: the upstream connection goes back to the
// pool (or is closed), and the client's next request is handled.
func (ex *exchange) finish() {
	c, up := ex.c, ex.up
	if up != nil {
		up.ex, ex.up = nil, nil
		if ex.upClose || ex.mode == bodyUntilClose || len(up.in) > 0 || up.hup {
			up.close()
		} else {
			up.pool.put(up)
		}
	}
	ex.u.inflight.Add(-1)
	ex.active = false
	ex.s.m.observe(ex.status, time.Since(ex.start))
	c.last = c.l.now
	if !c.flush() {
		return
	}
	c.advance()
}

// evUp is an upstream connection owned by a loop.
type evUp struct {
	l        *loop
	fd       int
	pool     *evPool
	in, out  []byte
	sent     int
	readable bool
	writable bool
	hup      bool
	closed   bool
	ex       *exchange // the exchange using it; nil while pooled
	since    time.Time // pooled since
}

func (up *evUp) consume(n int) { up.in = up.in[:copy(up.in, up.in[n:])] }

func (up *evUp) event(ev uint32) {
	if up.ex == nil {
		// pooled: the upstream closed it, or sent what nobody asked for
		if ev&(unix.EPOLLIN|hupEvents) != 0 && !up.stillIdle() {
			up.close()
		}
		return
	}
	if ev&(unix.EPOLLIN|hupEvents) != 0 {
		up.readable = true
	}
	if ev&hupEvents != 0 {
		up.hup = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		up.writable = true
	}
	if up.sent < len(up.out) {
		if !up.writable || !up.flush() {
			return
		}
	}
	up.ex.readAnswer()
}

// stillIdle checks a pooled connection after an event: nothing to read
// and not closed (the event may be left over from its last exchange).
func (up *evUp) stillIdle() bool {
	var b [1]byte
	_, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(up.fd), uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return e == unix.EAGAIN
}

// flush writes the request; false if the connection failed.
func (up *evUp) flush() bool {
	for up.sent < len(up.out) {
		n, err := rawWrite(up.fd, up.out[up.sent:])
		if err == 0 && n > 0 {
			up.sent += n
			if up.sent < len(up.out) {
				up.writable = false
				return true
			}
			break
		}
		switch err {
		case unix.EAGAIN:
			up.writable = false
			return true
		case unix.EINTR:
			continue
		default:
			if ex := up.ex; ex != nil {
				ex.transportErr(&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", err)}, false)
			} else {
				up.close()
			}
			return false
		}
	}
	up.out, up.sent = nil, 0
	return true
}

func (up *evUp) close() {
	if up.closed {
		return
	}
	up.closed = true
	up.l.forget(up.fd)
	if up.in != nil {
		up.l.putBuf(up.in)
		up.in = nil
	}
}

func (up *evUp) abort(err error) {
	if ex := up.ex; ex != nil && ex.active {
		ex.transportErr(err, false)
		return
	}
	up.close()
}
