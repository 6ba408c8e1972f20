package listeners

import (
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// A connection made while no handle is open (between an old version's Close
// and a new version's Listen) must be served by the next handle.
func TestSocketSurvivesHandover(t *testing.T) {
	p := New()
	p.Linger = 50 * time.Millisecond
	h1, err := p.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := h1.Addr().String()
	h1.Close()
	if _, err := h1.Accept(); err == nil {
		t.Fatal("Accept on a closed handle succeeded")
	}

	c, err := net.Dial("tcp", addr) // nobody accepting: must queue, not be refused
	if err != nil {
		t.Fatalf("dial during handover: %v", err)
	}
	defer c.Close()

	h2, err := p.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("relisten: %v", err)
	}
	s, err := h2.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go s.Write([]byte("hi"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q %v", buf, err)
	}
	s.Close()

	h2.Close()
	time.Sleep(200 * time.Millisecond)
	if len(p.Addrs()) != 0 {
		t.Fatal("socket not closed after linger with no handles")
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("socket still accepting after last handle closed")
	}
}

// failingListener fails its first Accepts as a process out of file
// descriptors does.
type failingListener struct {
	net.Listener
	fails int
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// Running out of file descriptors is passing: the socket goes on accepting
// (its accept loop used to end, leaving the address open but unserved).
func TestAcceptSurvivesEMFILE(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &socket{ln: &failingListener{Listener: ln, fails: 3}, conns: make(chan net.Conn), stop: make(chan struct{})}
	go s.acceptLoop()
	defer s.close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case sc := <-s.conns:
		sc.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted after EMFILE")
	}
}
