//go:build !unix

package server

import "net"

// watchDisconnect cannot peek at sockets on this platform: disconnects are noticed by heartbeats only.
func watchDisconnect(net.Conn, func()) (stop func(), ok bool) { return func() {}, false }

// peekDisconnects has no effect on this platform.
var peekDisconnects = false
