package edge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

const fuzzMaxBody = 512

// fuzzStaticText is every fixed text a refusal may hold. A code the fuzzer
// happens to draw from it is not an echo.
var fuzzStaticText = strings.Join([]string{
	"query string is not valid URL encoding",
	"is not allowed: use GET or POST",
	"code is given more than once", "appid is given more than once",
	"could not read the request body",
	fmt.Sprintf("request body is larger than %d bytes", fuzzMaxBody),
	"missing or malformed Content-Type: " + shapes,
	"is not supported: " + shapes,
	"form body is not valid URL encoding",
	"empty body: " + shapes,
	"body is not a JSON object with string fields code and appid",
	"body is not a JSON string",
	"code is required",
	fmt.Sprintf("code must be 1 to %d printable ASCII characters without spaces", protocol.MaxTokenLen),
	fmt.Sprintf("appid must be 1 to %d printable ASCII characters without spaces", protocol.MaxTokenLen),
}, "\n")

const asciiSpace = " \t\r\n\v\f"

// FuzzParseRequest checks parseRequest over any method, Content-Type,
// query and body: it never panics; what it accepts is valid and was in the
// input as sent (never altered); what it refuses is a bad_request with a
// status of the contract, and the refusal never echoes the code.
func FuzzParseRequest(f *testing.F) {
	seeds := []struct {
		method, contentType, query, body string
	}{
		{"GET", "", "code=0a1B2c3D4e5F6g7H8i9J0k1L2m3N4o", ""},
		{"GET", "", "code=0a1B2c3D&appid=wx0123456789abcdef", ""},
		{"HEAD", "", "appid=wx1&code=abc%26secret%3Dx", ""},
		{"GET", "", "code=Caf%C3%A9Code&appid=%FF", ""},
		{"GET", "", "code=a&code=b", ""},
		{"GET", "", "code=%zz;x", ""},
		{"POST", "application/json", "", `{"code":"0a1B2c3D","appid":"wx123"}`},
		{"POST", "application/json; charset=utf-8", "appid=wxq", `{"code":"a\/b\u0063","appid":null}`},
		{"POST", "application/json", "", `"0a1B2c3D4e5F6g7H"`},
		{"POST", "application/json", "appid=wx9", "0a1B2c3D4e5F6g7H\n"},
		{"POST", "application/json", "", `{"code":12345678}`},
		{"POST", "application/json", "", `{"code":"Tail0Code"}}`},   // was accepted: trailing garbage
		{"POST", "application/json", "", "\u00a0{\"code\":\"x\"}"},  // was accepted: not JSON
		{"POST", "application/json", "", `{"CODE":"x","code":"y"}`}, // case-insensitive keys
		{"POST", "application/x-www-form-urlencoded", "", "code=0a1B2c3D&appid=wx123"},
		{"POST", "application/x-www-form-urlencoded; charset=UTF-8", "appid=q", "code=a%2Bb+c"},
		{"POST", "text/plain", "appid=wx123", "0a1B2c3D4e5F6g7H\r\n"},
		{"POST", "text/plain", "", "Nbsp0Code\u00a0"}, // was accepted as "Nbsp0Code"
		{"POST", "text/plain; charset=utf-8", "", "Bad0Code\xff"},
		{"POST", "text/plain", "", strings.Repeat("x", fuzzMaxBody+1)},
		{"POST", "", "", "code=abc"},
		{"POST", "image/png", "", "0a1B2c3D"},
		{"POST", "application/json; =", "", "{}"},
		{"PUT", "application/json", "code=0a1B2c3D", `{"code":"0a1B2c3D"}`},
		{"DELETE", "", "code=0a1B2c3D", ""},
		{"PATCH", "text/plain", "", "0a1B2c3D"},
	}
	for _, s := range seeds {
		f.Add(s.method, s.contentType, s.query, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, method, contentType, query string, body []byte) {
		r := &http.Request{
			Method: method,
			URL:    &url.URL{Path: "/v1/openid", RawQuery: query},
			Header: http.Header{},
			Body:   io.NopCloser(bytes.NewReader(body)),
		}
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		req, e := parseRequest(r, fuzzMaxBody)
		queryValues, queryErr := url.ParseQuery(query)
		mt, _, mtErr := mime.ParseMediaType(contentType)
		if mtErr != nil {
			mt = ""
		}
		getLike := method == http.MethodGet || method == http.MethodHead

		if e != nil {
			checkFuzzRefusal(t, e, method, mt, query, body)
			switch {
			case queryErr != nil:
				if e.Status != http.StatusBadRequest {
					t.Fatalf("malformed query: status %d", e.Status)
				}
			case !getLike && method != http.MethodPost:
				if e.Status != http.StatusMethodNotAllowed {
					t.Fatalf("method %q: status %d, want 405", method, e.Status)
				}
			case method == http.MethodPost && len(body) > fuzzMaxBody:
				if e.Status != http.StatusRequestEntityTooLarge {
					t.Fatalf("%d-byte body: status %d, want 413", len(body), e.Status)
				}
			case method == http.MethodPost && contentType != "" && mtErr == nil &&
				(mt == ctJSON || mt == ctForm || mt == ctText):
				if e.Status != http.StatusBadRequest {
					t.Fatalf("supported type %q: status %d, want 400", mt, e.Status)
				}
			case method == http.MethodPost:
				if e.Status != http.StatusUnsupportedMediaType {
					t.Fatalf("type %q: status %d, want 415", contentType, e.Status)
				}
			}
			return
		}

		// Accepted.
		if !protocol.ValidToken(req.Code) {
			t.Fatalf("accepted invalid code %q", req.Code)
		}
		if req.AppID != "" && !protocol.ValidToken(req.AppID) {
			t.Fatalf("accepted invalid appid %q", req.AppID)
		}
		if queryErr != nil {
			t.Fatalf("accepted a malformed query %q", query)
		}
		if !getLike && method != http.MethodPost {
			t.Fatalf("accepted method %q", method)
		}
		if method == http.MethodPost && len(body) > fuzzMaxBody {
			t.Fatalf("accepted a %d-byte body", len(body))
		}
		if !fromInput(req.Code, "code", queryValues, body) {
			t.Fatalf("code %q is not in the input (query %q, body %q)", req.Code, query, body)
		}
		if req.AppID != "" && !fromInput(req.AppID, "appid", queryValues, body) {
			t.Fatalf("appid %q is not in the input (query %q, body %q)", req.AppID, query, body)
		}
		if getLike {
			if vs := queryValues["code"]; len(vs) != 1 || vs[0] != req.Code {
				t.Fatalf("GET code %q, query codes %q", req.Code, vs)
			}
			return
		}
		if contentType == "" || mtErr != nil {
			t.Fatalf("accepted POST with Content-Type %q", contentType)
		}
		trimmed := bytes.Trim(body, asciiSpace)
		switch mt {
		case ctText:
			// Only ASCII white space around the code may be dropped.
			if string(trimmed) != req.Code {
				t.Fatalf("text/plain body %q gave code %q", body, req.Code)
			}
		case ctJSON:
			if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '"') {
				if !json.Valid(trimmed) {
					t.Fatalf("accepted invalid JSON %q", body)
				}
			} else if string(trimmed) != req.Code {
				t.Fatalf("bare JSON body %q gave code %q", body, req.Code)
			}
		case ctForm:
			form, err := url.ParseQuery(string(body))
			if err != nil {
				t.Fatalf("accepted a malformed form %q", body)
			}
			if vs := form["code"]; len(vs) != 1 || vs[0] != req.Code {
				t.Fatalf("form code %q, form codes %q", req.Code, vs)
			}
		default:
			t.Fatalf("accepted Content-Type %q", contentType)
		}
	})
}

// fromInput reports whether v is in the input as sent: a value of the
// query or form after unescaping, a JSON string of the body after
// decoding, or bytes of the body as they are.
func fromInput(v, key string, query url.Values, body []byte) bool {
	if bytes.Contains(body, []byte(v)) {
		return true
	}
	for _, s := range query[key] {
		if s == v {
			return true
		}
	}
	form, _ := url.ParseQuery(string(body))
	for _, s := range form[key] {
		if s == v {
			return true
		}
	}
	for _, s := range jsonStrings(body) {
		if s == v {
			return true
		}
	}
	return false
}

// jsonStrings returns the body as a JSON string, or the string members of
// the body as a JSON object (keys match case-insensitively, as in
// encoding/json).
func jsonStrings(body []byte) []string {
	var s string
	if json.Unmarshal(body, &s) == nil {
		return []string{s}
	}
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	var out []string
	for _, v := range m {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// checkFuzzRefusal checks the shape of a refusal, and that its message
// does not echo any value the input offers as a code.
func checkFuzzRefusal(t *testing.T, e *protocol.Error, method, mt, query string, body []byte) {
	t.Helper()
	if e.Kind != protocol.KindBadRequest || e.Retry != protocol.RetryNo {
		t.Fatalf("kind %s retry %s, want bad_request no", e.Kind, e.Retry)
	}
	switch e.Status {
	case 400, 405, 413, 415:
	default:
		t.Fatalf("status %d", e.Status)
	}
	if e.Message == "" {
		t.Fatal("empty message")
	}
	// The message may echo the method and the media type, nothing else.
	masked := e.Message
	for _, echo := range []string{method, mt} {
		if echo != "" {
			masked = strings.ReplaceAll(masked, echo, "\x00")
		}
	}
	for _, c := range codeCandidates(query, body) {
		if len(c) >= 8 && strings.Contains(masked, c) && !strings.Contains(fuzzStaticText, c) {
			t.Fatalf("message %q echoes the code %q", e.Message, c)
		}
	}
}

// codeCandidates lists what the input could mean as a code, in each shape.
func codeCandidates(query string, body []byte) []string {
	q, _ := url.ParseQuery(query)
	form, _ := url.ParseQuery(string(body))
	out := append(append([]string{}, q["code"]...), form["code"]...)
	out = append(out, string(body), string(bytes.TrimSpace(body)), string(bytes.Trim(body, asciiSpace)))
	var s string
	if json.Unmarshal(body, &s) == nil {
		out = append(out, s)
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(bytes.TrimSpace(body), &m) == nil {
		for k, v := range m {
			if strings.EqualFold(k, "code") {
				out = append(out, string(v))
				if json.Unmarshal(v, &s) == nil {
					out = append(out, s)
				}
			}
		}
	}
	return out
}
