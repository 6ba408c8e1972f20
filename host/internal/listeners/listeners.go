// Package listeners keeps sockets that plugins ask for, so that a socket
// outlives the plugin instance using it: when a plugin is swapped, the old
// instance closes its handle, the new one opens a handle on the same
// address, and connections that arrive in between wait in the kernel's
// accept queue instead of being refused.
package listeners

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Pool owns the real sockets.
type Pool struct {
	mu      sync.Mutex
	sockets map[string]*socket
	// Linger is how long a socket with no handles stays open, so that a
	// swap (close old handle, open new) never drops it. Unload closes it
	// after this.
	Linger time.Duration
}

// New returns an empty pool.
func New() *Pool { return &Pool{sockets: map[string]*socket{}, Linger: 5 * time.Second} }

type socket struct {
	keys    []string
	ln      net.Listener
	conns   chan net.Conn
	handles int
	closing *time.Timer
	stop    chan struct{} // closed when the socket is closed
}

// Listen returns a handle on the socket for network/addr, opening it first
// if no handle holds it. Several handles may accept at once (old and new
// version during a swap).
func (p *Pool) Listen(network, addr string) (net.Listener, error) {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil, fmt.Errorf("listen %s %s: only tcp is supported", network, addr)
	}
	key := network + " " + addr
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sockets[key]
	if s == nil {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		s = &socket{ln: ln, conns: make(chan net.Conn), stop: make(chan struct{})}
		// Register the bound address too, so that ":0" can be asked for again.
		s.keys = []string{key, network + " " + ln.Addr().String()}
		for _, k := range s.keys {
			p.sockets[k] = s
		}
		go s.acceptLoop()
	}
	if s.closing != nil {
		s.closing.Stop()
		s.closing = nil
	}
	s.handles++
	return &handle{p: p, s: s, closed: make(chan struct{})}, nil
}

// Addrs lists the open sockets, for the host's status output.
func (p *Pool) Addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[*socket]bool{}
	var out []string
	for _, s := range p.sockets {
		if !seen[s] {
			seen[s] = true
			out = append(out, s.ln.Addr().String())
		}
	}
	return out
}

// CloseAll closes every socket now (host shutdown).
func (p *Pool) CloseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, s := range p.sockets {
		if !s.closed() {
			s.close()
		}
		delete(p.sockets, k)
	}
}

func (p *Pool) release(s *socket) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.handles--
	if s.handles > 0 {
		return
	}
	s.closing = time.AfterFunc(p.Linger, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if s.handles == 0 && !s.closed() {
			s.close()
			for _, k := range s.keys {
				delete(p.sockets, k)
			}
		}
	})
}

// acceptLoop hands each accepted connection to whichever handle asks first.
// The channel is unbuffered: with no handle accepting, connections wait in
// the kernel's queue, not here.
// Only the socket's close ends it: other Accept errors (out of file
// descriptors, buffers or memory) pass, so it backs off and tries again.
func (s *socket) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.closed() || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-s.stop:
				return
			}
			continue
		}
		backoff = 0
		select {
		case s.conns <- c:
		case <-s.stop:
			c.Close()
			return
		}
	}
}

func (s *socket) closed() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// close stops the socket; p.mu is held.
func (s *socket) close() {
	close(s.stop)
	s.ln.Close()
}

type handle struct {
	p      *Pool
	s      *socket
	once   sync.Once
	closed chan struct{}
}

func (h *handle) Accept() (net.Conn, error) {
	select {
	case <-h.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-h.s.conns:
		return c, nil
	case <-h.closed:
		return nil, net.ErrClosed
	case <-h.s.stop:
		return nil, net.ErrClosed
	}
}

func (h *handle) Close() error {
	h.once.Do(func() {
		close(h.closed)
		h.p.release(h.s)
	})
	return nil
}

func (h *handle) Addr() net.Addr { return h.s.ln.Addr() }
