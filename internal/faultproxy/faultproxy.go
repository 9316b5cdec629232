// Package faultproxy is a test helper: an HTTP proxy on 127.0.0.1 that sits
// between walship's S3 client and a real S3 server (versitygw) and injects
// faults, per request or by rule: 5xx and SlowDown answers in S3's XML,
// connections reset or closed mid-body, bodies that stall with the
// connection open, corrupted bodies, added latency, a middlebox's HTML 404,
// and If-None-Match stripped from writes (re-signed, as a server that
// ignores the header would behave). It counts every request and every fault
// it injected, so tests can assert both the outcome and that the fault
// really happened.
package faultproxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Kind is a kind of fault.
type Kind int

const (
	// ServerError answers 500 InternalError without forwarding.
	ServerError Kind = iota + 1
	// ServerErrorAfter forwards (the server acts: a PUT is stored), then
	// answers 500 InternalError: an outcome the client cannot know.
	ServerErrorAfter
	// SlowDown answers 503 SlowDown without forwarding.
	SlowDown
	// Reset forwards, sends the response headers and After body bytes,
	// then resets the connection (TCP RST). After < 0: reset before the
	// response, once the server has acted.
	Reset
	// Truncate is Reset with a clean close (FIN) instead of a reset.
	Truncate
	// Stall forwards, sends the headers and After body bytes (none of the
	// response if After < 0), then sends nothing more, with the
	// connection open, until the client gives up or the proxy closes.
	Stall
	// Corrupt forwards and flips the body byte at After (modulo the
	// body's length).
	Corrupt
	// Latency waits Delay, then forwards.
	Latency
	// HTML404 answers 404 with a text/html page, as a proxy or load
	// balancer does, without S3's NoSuchKey XML; not forwarded.
	HTML404
	// StripIfNoneMatch removes If-None-Match from a write (PUT, or the
	// POST that completes a multipart upload), signs the request again
	// and forwards it. Requests without the header do not match.
	StripIfNoneMatch
)

var kindNames = map[Kind]string{
	ServerError: "500", ServerErrorAfter: "500-after", SlowDown: "slowdown", Reset: "reset",
	Truncate: "truncate", Stall: "stall", Corrupt: "corrupt", Latency: "latency", HTML404: "html404",
	StripIfNoneMatch: "strip-if-none-match",
}

func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Rule says which requests get a fault. A request matches when its method
// and path agree; of the matching requests, the rule fires on every
// Every-th (0 or 1: each), then with Probability (0: always), at most
// Times times (0: no limit). Rules are tried in order; the first that
// fires decides the request.
type Rule struct {
	Method      string // "GET", "PUT", "HEAD", "POST", "DELETE"; "" any
	Key         string // a substring of the path ("/bucket/key"); "" any
	Query       string // a substring of the raw query ("list-type" for listings); "" any
	Every       int
	Probability float64
	Times       int
	Fault       Kind
	After       int64         // see the Kind
	Delay       time.Duration // Latency

	matched, fired int
}

// Options configure a proxy.
type Options struct {
	// Upstream is the S3 server's base URL, e.g. http://127.0.0.1:7070.
	Upstream string
	// SecretKey signs requests again after StripIfNoneMatch; the access
	// key and region are read from the request's own signature.
	SecretKey string
	// Seed seeds the RNG behind Rule.Probability; runs with one seed
	// inject the same faults into the same sequence of requests.
	Seed uint64
}

// Request is one request the proxy saw.
type Request struct {
	Method string
	Path   string
	Query  string
	Fault  Kind // 0 if none was injected
}

// Proxy is a running fault proxy.
type Proxy struct {
	o        Options
	srv      *http.Server
	ln       net.Listener
	upstream *http.Transport
	signer   *v4.Signer
	done     chan struct{}

	mu       sync.Mutex
	rng      *rand.Rand
	rules    []*Rule
	log      []Request
	injected map[Kind]int
	hijacked map[net.Conn]bool
}

// Start listens on a free 127.0.0.1 port and serves until Close.
func Start(o Options) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		o: o, ln: ln, done: make(chan struct{}),
		upstream: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16, Proxy: nil},
		signer:   v4.NewSigner(func(so *v4.SignerOptions) { so.DisableURIPathEscaping = true }),
		rng:      rand.New(rand.NewPCG(o.Seed, o.Seed^0xfa17)),
		injected: map[Kind]int{}, hijacked: map[net.Conn]bool{},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// URL is the proxy's endpoint, to give the S3 client.
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Close stops the proxy, ending stalled and hijacked connections too.
func (p *Proxy) Close() error {
	close(p.done)
	err := p.srv.Close()
	p.mu.Lock()
	for c := range p.hijacked {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.upstream.CloseIdleConnections()
	return err
}

// SetRules replaces the rules (and their counts).
func (p *Proxy) SetRules(rules ...Rule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = p.rules[:0]
	for i := range rules {
		r := rules[i]
		r.matched, r.fired = 0, 0
		p.rules = append(p.rules, &r)
	}
}

// Injected is the number of faults injected of kind k, or of every kind if
// k is 0.
func (p *Proxy) Injected(k Kind) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k != 0 {
		return p.injected[k]
	}
	n := 0
	for _, v := range p.injected {
		n += v
	}
	return n
}

// Count is the number of requests seen with method ("" any) whose path
// contains key.
func (p *Proxy) Count(method, key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.log {
		if (method == "" || r.Method == method) && strings.Contains(r.Path, key) {
			n++
		}
	}
	return n
}

// Requests is a copy of the request log.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.log...)
}

// decide picks the fault for r, records the request and counts the fault.
func (p *Proxy) decide(r *http.Request) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	var chosen *Rule
	for _, rule := range p.rules {
		if rule.Method != "" && rule.Method != r.Method || !strings.Contains(r.URL.Path, rule.Key) ||
			!strings.Contains(r.URL.RawQuery, rule.Query) {
			continue
		}
		if rule.Fault == StripIfNoneMatch && (r.Header.Get("If-None-Match") == "" || (r.Method != http.MethodPut && r.Method != http.MethodPost)) {
			continue
		}
		rule.matched++
		if rule.Every > 1 && rule.matched%rule.Every != 0 {
			continue
		}
		if rule.Probability > 0 && p.rng.Float64() >= rule.Probability {
			continue
		}
		if rule.Times > 0 && rule.fired >= rule.Times {
			continue
		}
		rule.fired++
		chosen = rule
		break
	}
	req := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery}
	if chosen != nil {
		req.Fault = chosen.Fault
		p.injected[chosen.Fault]++
	}
	p.log = append(p.log, req)
	return chosen
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rule := p.decide(r)
	if rule == nil {
		p.forwardAndCopy(w, r, nil)
		return
	}
	switch rule.Fault {
	case ServerError:
		p.s3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case SlowDown:
		p.s3Error(w, r, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
	case HTML404:
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"+
				"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p><hr></body></html>\n")
		}
	case Latency:
		t := time.NewTimer(rule.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-p.done:
			t.Stop()
			return
		}
		p.forwardAndCopy(w, r, nil)
	case StripIfNoneMatch:
		p.forwardAndCopy(w, r, p.strip)
	case ServerErrorAfter:
		resp, err := p.forward(r, nil)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		p.s3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case Corrupt:
		p.forwardAndCopy(w, r, nil, rule.After)
	case Reset, Truncate, Stall:
		p.broken(w, r, rule)
	}
}

func (p *Proxy) s3Error(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", "faultproxy")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		fmt.Fprintf(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message>"+
			"<Resource>%s</Resource><RequestId>faultproxy</RequestId></Error>", code, msg, r.URL.Path)
	}
}

// hopHeaders are not forwarded.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect"}

// forward sends r to the upstream, changed by edit if not nil.
func (p *Proxy) forward(r *http.Request, edit func(*http.Request) error) (*http.Response, error) {
	var body io.Reader = r.Body
	if r.ContentLength == 0 {
		body = http.NoBody
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.o.Upstream+r.RequestURI, body)
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Host = r.Host
	out.ContentLength = r.ContentLength
	if edit != nil {
		if err := edit(out); err != nil {
			return nil, err
		}
	}
	return p.upstream.RoundTrip(out)
}

// strip removes If-None-Match and signs the request again with the
// credential scope of the client's own signature.
func (p *Proxy) strip(out *http.Request) error {
	out.Header.Del("If-None-Match")
	auth := out.Header.Get("Authorization")
	i := strings.Index(auth, "Credential=")
	if i < 0 {
		return fmt.Errorf("faultproxy: request is not signed with SigV4")
	}
	scope := strings.Split(strings.SplitN(auth[i+len("Credential="):], ",", 2)[0], "/")
	if len(scope) < 5 {
		return fmt.Errorf("faultproxy: malformed credential scope")
	}
	signed, err := time.Parse("20060102T150405Z", out.Header.Get("X-Amz-Date"))
	if err != nil {
		return fmt.Errorf("faultproxy: X-Amz-Date: %w", err)
	}
	out.Header.Del("Authorization")
	creds := aws.Credentials{AccessKeyID: scope[0], SecretAccessKey: p.o.SecretKey}
	return p.signer.SignHTTP(out.Context(), creds, out, out.Header.Get("X-Amz-Content-Sha256"), scope[3], scope[2], signed)
}

// forwardAndCopy forwards r and copies the answer back, flipping the body
// byte at corrupt[0] if given.
func (p *Proxy) forwardAndCopy(w http.ResponseWriter, r *http.Request, edit func(*http.Request) error, corrupt ...int64) {
	resp, err := p.forward(r, edit)
	if err != nil {
		http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	if len(corrupt) == 0 || resp.ContentLength == 0 || r.Method == http.MethodHead {
		_, _ = io.Copy(w, resp.Body)
		return
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return
	}
	if len(b) > 0 {
		b[corrupt[0]%int64(len(b))] ^= 0xFF
	}
	_, _ = w.Write(b)
}

// broken forwards r and breaks the answer as rule says, on the raw
// connection.
func (p *Proxy) broken(w http.ResponseWriter, r *http.Request, rule *Rule) {
	resp, err := p.forward(r, nil)
	if err != nil {
		http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if resp.ContentLength < 0 && r.Method != http.MethodHead {
		// A chunked answer: learn its length, so that a short body is
		// one the client can tell.
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
			return
		}
		resp.ContentLength, resp.Body = int64(len(b)), io.NopCloser(bytes.NewReader(b))
	}
	conn, bufrw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	p.mu.Lock()
	p.hijacked[conn] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.hijacked, conn)
		p.mu.Unlock()
		_ = conn.Close()
	}()
	if rule.After >= 0 {
		writeHead(bufrw.Writer, resp)
		if r.Method != http.MethodHead {
			_, _ = io.CopyN(bufrw, resp.Body, rule.After)
		}
		_ = bufrw.Flush()
	}
	switch rule.Fault {
	case Reset:
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	case Stall:
		// Hold the connection open, sending nothing, until the client
		// closes it (the read returns) or the proxy stops.
		gone := make(chan struct{})
		go func() {
			_, _ = io.Copy(io.Discard, bufrw)
			close(gone)
		}()
		select {
		case <-gone:
		case <-p.done:
		}
	}
}

// writeHead writes the status line and headers of resp, as received.
func writeHead(w *bufio.Writer, resp *http.Response) {
	fmt.Fprintf(w, "HTTP/1.1 %s\r\n", resp.Status)
	h := resp.Header.Clone()
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", fmt.Sprint(resp.ContentLength))
	}
	_ = h.Write(w)
	_, _ = io.WriteString(w, "\r\n")
}

// Wait is for tests that must see a stalled request arrive before they act:
// it returns once n requests matching method and key were seen, or ctx ends.
func (p *Proxy) Wait(ctx context.Context, method, key string, n int) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for p.Count(method, key) < n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
