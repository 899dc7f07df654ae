// tlsdemo: a Go HTTPS server and client for andon's tests of Go's crypto/tls.
//
//	tlsdemo serve ADDR CERT KEY    serve /, /size/<n> and /status/<code> over TLS until killed
//	tlsdemo serve-h2 ADDR [CERT KEY]  the same, HTTP/2 offered too (ALPN h2, as net/http does by default)
//	tlsdemo get URL N              N GETs of URL on one kept-alive connection; prints each status and body size
//	tlsdemo get-h2 URL N           the same over HTTP/2 (net/http's client default with TLS)
//	tlsdemo self N [wait]          a server on 127.0.0.1 and N GETs to it from the same process;
//	                               prints {"pid": its pid, "port": the server's} first
//	tlsdemo pipe N [wait]          N pings echoed over TLS on a net.Pipe (a net.Conn with no socket)
//	tlsdemo stale [wait]           on one goroutine: a Read of a TLS socket that times out (no
//	                               plaintext), then a request and response over TLS on a net.Pipe
//	tlsdemo pingpong N [wait]      N round trips of 64 bytes over TLS on loopback TCP, timed: prints
//	                               {"n": N, "ns_per_round_trip": ...} (four crypto/tls calls each)
//
// wait: read a byte from stdin before the first request (a tracer attaches meanwhile).
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func handler(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/size/"):
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/size/"))
		if err != nil || n < 0 || n > 1<<20 {
			http.Error(w, "bad size", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write([]byte(strings.Repeat("x", n)))
	case strings.HasPrefix(r.URL.Path, "/status/"):
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 200 || code > 599 {
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	case r.URL.Path == "/":
		w.Write([]byte("hello from go\n"))
	default:
		http.NotFound(w, r)
	}
}

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func client(h2 bool) *http.Client {
	t := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: h2,
		MaxIdleConns:      1,
	}
	if !h2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // HTTP/1.1 only
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: t}
}

func get(url string, n int, h2 bool) error {
	c := client(h2)
	for i := 0; i < n; i++ {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		fmt.Printf("%d %d %s\n", resp.StatusCode, len(body), resp.Proto)
	}
	return nil
}

func serverOn(ln net.Listener, cert tls.Certificate, h2 bool) *http.Server {
	srv := &http.Server{Handler: http.HandlerFunc(handler),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	if h2 {
		go srv.ServeTLS(ln, "", "") // net/http's own HTTP/2 set-up: ALPN h2 and http/1.1
	} else {
		srv.TLSConfig.NextProtos = []string{"http/1.1"}
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		go srv.Serve(tls.NewListener(ln, srv.TLSConfig))
	}
	return srv
}

func wait() {
	if os.Args[len(os.Args)-1] == "wait" {
		os.Stdout.Sync()
		io.ReadFull(os.Stdin, make([]byte, 1))
	}
}

func pipe(n int) error {
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{selfSigned()}})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	go func() {
		buf := make([]byte, 64)
		for {
			k, err := srv.Read(buf)
			if err != nil {
				return
			}
			srv.Write(buf[:k])
		}
	}()
	wait()
	buf := make([]byte, 4)
	for i := 0; i < n; i++ {
		if _, err := cli.Write([]byte("ping")); err != nil {
			return err
		}
		if _, err := io.ReadFull(cli, buf); err != nil {
			return err
		}
	}
	fmt.Printf("%d pings\n", n)
	return nil
}

// an HTTP request and its response of 64 bytes each: what a tracer recognises as HTTP
var (
	req  = []byte("GET /pingpong HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: 012345678901\r\n\r\n")
	resp = []byte("HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n0123456789012345678901234")
)

// serveOne accepts one connection on ln and runs fn on its TLS server side.
func serveOne(ln net.Listener, fn func(*tls.Conn)) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	fn(tls.Server(c, &tls.Config{Certificates: []tls.Certificate{selfSigned()}}))
}

func pingpong(n int) error {
	if len(req) != 64 || len(resp) != 64 {
		return fmt.Errorf("pingpong messages of %d and %d bytes", len(req), len(resp))
	}
	wait() // before the connection: a tracer that follows this pid sees it made
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go serveOne(ln, func(srv *tls.Conn) {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(srv, buf); err != nil {
				return
			}
			if _, err := srv.Write(resp); err != nil {
				return
			}
		}
	})
	cli, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	msg, buf := req, make([]byte, 64)
	if _, err := cli.Write(msg); err != nil { // the handshake, and one round trip, before the clock
		return err
	}
	if _, err := io.ReadFull(cli, buf); err != nil {
		return err
	}
	t := time.Now()
	for i := 0; i < n; i++ {
		if _, err := cli.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(cli, buf); err != nil {
			return err
		}
	}
	fmt.Printf("{\"n\": %d, \"ns_per_round_trip\": %d}\n", n, time.Since(t).Nanoseconds()/int64(n))
	return nil
}

func stale() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go serveOne(ln, func(srv *tls.Conn) { io.Copy(io.Discard, srv) }) // never answers
	wait()
	cli, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	buf := make([]byte, 64)
	cli.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := cli.Read(buf); err == nil {
		return fmt.Errorf("the socket Read did not time out")
	}
	a, b := net.Pipe()
	psrv := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{selfSigned()}})
	go func() {
		in := make([]byte, 64)
		if _, err := io.ReadFull(psrv, in); err == nil {
			psrv.Write(resp)
		}
	}()
	pcli := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	if _, err := pcli.Write(req); err != nil {
		return err
	}
	if _, err := io.ReadFull(pcli, buf); err != nil { // on this goroutine, as the socket Read was
		return err
	}
	fmt.Printf("%s\n", buf[:15])
	cli.Close()
	return nil
}

func main() {
	if len(os.Args) < 2 || (len(os.Args) < 3 && os.Args[1] != "stale") {
		fmt.Fprintln(os.Stderr, "usage: tlsdemo serve[-h2] ADDR [CERT KEY] | get[-h2] URL N | self N | pipe N | pingpong N | stale")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve", "serve-h2":
		var cert tls.Certificate
		if len(os.Args) >= 5 {
			cert, err = tls.LoadX509KeyPair(os.Args[3], os.Args[4])
		} else {
			cert = selfSigned()
		}
		if err == nil {
			var ln net.Listener
			if ln, err = net.Listen("tcp", os.Args[2]); err == nil {
				serverOn(ln, cert, os.Args[1] == "serve-h2")
				select {}
			}
		}
	case "get", "get-h2":
		n := 1
		if len(os.Args) > 3 {
			n, _ = strconv.Atoi(os.Args[3])
		}
		err = get(os.Args[2], n, os.Args[1] == "get-h2")
	case "self":
		n, _ := strconv.Atoi(os.Args[2])
		var ln net.Listener
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err == nil {
			serverOn(ln, selfSigned(), false)
			fmt.Printf("{\"pid\": %d, \"port\": %d}\n", os.Getpid(), ln.Addr().(*net.TCPAddr).Port)
			wait()
			err = get(fmt.Sprintf("https://127.0.0.1:%d/size/100", ln.Addr().(*net.TCPAddr).Port), n, false)
		}
	case "pipe":
		n, _ := strconv.Atoi(os.Args[2])
		err = pipe(n)
	case "pingpong":
		n, _ := strconv.Atoi(os.Args[2])
		err = pingpong(n)
	case "stale":
		err = stale()
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlsdemo:", err)
		os.Exit(1)
	}
}
