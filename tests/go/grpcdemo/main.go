// grpcdemo: a gRPC server and client on grpc-go over TLS (Go's crypto/tls, HTTP/2 by ALPN
// "h2"), for andon's tests. The service is schema-less: messages are raw protobuf bytes made
// by hand (a codec that passes bytes through), so no protoc-generated code is needed.
//
//	grpcdemo serve ADDR CERT KEY     serve /demo.Greeter/SayHello and /demo.Greeter/Fail
//	grpcdemo call ADDR NAME N        N SayHello calls then one Fail on one connection (TLS,
//	                                 certificate not checked), printing what each got as JSON
//
// SayHello {1: name} -> {1: "Hello, <name>!", 2: len(name)}; Fail aborts with NOT_FOUND
// "no such name: <name>".
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

// raw passes messages through as bytes: *[]byte on both ends.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" } // on the wire: application/grpc+proto's default, "application/grpc"

func field(num int, s string) []byte {
	b := []byte{byte(num<<3 | 2), byte(len(s))}
	return append(b, s...)
}

func varint(num, v int) []byte { return []byte{byte(num << 3), byte(v)} }

// name: field 1 of a message made by field() (short strings only)
func name(msg []byte) string {
	if len(msg) < 2 || msg[0] != 1<<3|2 || int(msg[1]) > len(msg)-2 {
		return ""
	}
	return string(msg[2 : 2+int(msg[1])])
}

func handler(srv interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	n := name(req)
	switch method {
	case "/demo.Greeter/SayHello":
		resp := append(field(1, "Hello, "+n+"!"), varint(2, len(n))...)
		return stream.SendMsg(&resp)
	case "/demo.Greeter/Fail":
		return status.Errorf(codes.NotFound, "no such name: %s", n)
	}
	return status.Errorf(codes.Unimplemented, "no method %s", method)
}

func serve(addr, cert, key string) error {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&pair)), grpc.UnknownServiceHandler(handler))
	fmt.Println("ready", ln.Addr())
	return s.Serve(ln)
}

func call(addr, who string, n int) error {
	creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithTransportCredentials(creds), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(raw{})))
	if err != nil {
		return err
	}
	defer conn.Close()
	var out [][]string
	for i := 0; i < n; i++ {
		req, resp := field(1, who+"-"+strconv.Itoa(i)), []byte(nil)
		if err := conn.Invoke(ctx, "/demo.Greeter/SayHello", &req, &resp); err != nil {
			return err
		}
		out = append(out, []string{"OK", name(resp)})
	}
	req, resp := field(1, who), []byte(nil)
	err = conn.Invoke(ctx, "/demo.Greeter/Fail", &req, &resp)
	st, _ := status.FromError(err)
	out = append(out, []string{st.Code().String(), st.Message()})
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	encoding.RegisterCodec(raw{})
	var err error
	switch {
	case len(os.Args) == 5 && os.Args[1] == "serve":
		err = serve(os.Args[2], os.Args[3], os.Args[4])
	case len(os.Args) == 5 && os.Args[1] == "call":
		n, _ := strconv.Atoi(os.Args[4])
		err = call(os.Args[2], os.Args[3], n)
	default:
		err = fmt.Errorf("usage: grpcdemo serve ADDR CERT KEY | call ADDR NAME N")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcdemo:", err)
		os.Exit(1)
	}
}
