//go:build unix

package server

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// peekDisconnects turns the watcher on; benchmarks turn it off to measure the heartbeats alone.
var peekDisconnects = true

// watchDisconnect calls gone, once, as soon as the client closes conn (the peer's FIN or reset), until
// stop is called; stop returns when the watcher has exited. It lets a handler or stream writer notice a
// client that left while it has nothing to write (fasthttp tells only through a failed write).
//
// The watcher waits in the runtime's network poller for conn to become readable and then peeks
// (MSG_PEEK) one byte without consuming it: end of stream or a reset means the client is gone; data
// means a pipelined request, which is not a disconnect, and the watcher gives up (heartbeats still
// notice a disconnect then). It needs a socket: ok is false for other connections (TLS), where only the
// heartbeats work. Nothing reads conn while a handler runs or its response is written, so peeking
// takes nothing from fasthttp. stop ends the wait with a read deadline in the past and clears the
// deadline again; fasthttp sets its own before it reads the next request.
func watchDisconnect(conn net.Conn, gone func()) (stop func(), ok bool) {
	sc, isSock := conn.(syscall.Conn)
	if !isSock || !peekDisconnects {
		return func() {}, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return func() {}, false
	}
	// The request's read deadline may still be set; the wait must outlast it.
	conn.SetReadDeadline(time.Time{})
	var stopping atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		closed := false
		var b [1]byte
		raw.Read(func(fd uintptr) bool {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
				return false // nothing yet: wait for readability
			case err != nil || n == 0:
				closed = true // reset, or end of stream
			}
			return true
		})
		if closed && !stopping.Load() {
			gone()
		}
	}()
	return func() {
		stopping.Store(true)
		conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		conn.SetReadDeadline(time.Time{})
	}, true
}
