package edge

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

const (
	testMaxBody = 256
	ctJSON      = "application/json"
	ctForm      = "application/x-www-form-urlencoded"
	ctText      = "text/plain"
)

// newParseRequest builds a request to /v1/openid. An empty contentType
// leaves the header unset.
func newParseRequest(method, query, contentType, body string) *http.Request {
	target := "/v1/openid"
	if query != "" {
		target += "?" + query
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	return r
}

func TestParseRequestAccepts(t *testing.T) {
	t.Parallel()
	code128 := strings.Repeat("c", protocol.MaxTokenLen)
	const printable = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"
	tests := []struct {
		name        string
		method      string
		query       string
		contentType string
		body        string
		wantCode    string
		wantAppID   string
	}{
		{"GET code", "GET", "code=0a1B2c3D", "", "", "0a1B2c3D", ""},
		{"GET code and appid", "GET", "code=0a1B2c3D&appid=wx123", "", "", "0a1B2c3D", "wx123"},
		{"GET appid first", "GET", "appid=wx123&code=0a1B2c3D", "", "", "0a1B2c3D", "wx123"},
		{"GET percent-encoded", "GET", "code=ab%2Fcd%3D%3D", "", "", "ab/cd==", ""},
		{"GET other params ignored", "GET", "code=abc&t=123&_=x", "", "", "abc", ""},
		{"HEAD code", "HEAD", "code=abc", "", "", "abc", ""},
		{"GET 128 chars", "GET", "code=" + code128, "", "", code128, ""},
		{"GET 1 char", "GET", "code=x", "", "", "x", ""},
		{"GET body ignored", "GET", "code=abc", ctJSON, `{"code":"zzz"}`, "abc", ""},

		{"JSON object", "POST", "", ctJSON, `{"code":"0a1B2c3D","appid":"wx123"}`, "0a1B2c3D", "wx123"},
		{"JSON object no appid", "POST", "", ctJSON, `{"code":"0a1B2c3D"}`, "0a1B2c3D", ""},
		{"JSON object whitespace", "POST", "", ctJSON, " \n\t{ \"code\" : \"abc\" }\r\n ", "abc", ""},
		{"JSON object extra fields", "POST", "", ctJSON, `{"code":"abc","t":1,"x":{"y":[1]}}`, "abc", ""},
		{"JSON charset", "POST", "", "application/json; charset=utf-8", `{"code":"abc"}`, "abc", ""},
		{"JSON upper-case media type", "POST", "", "Application/JSON;charset=UTF-8", `{"code":"abc"}`, "abc", ""},
		{"JSON appid null falls back to query", "POST", "appid=wxq", ctJSON, `{"code":"abc","appid":null}`, "abc", "wxq"},
		{"JSON appid from query", "POST", "appid=wxq", ctJSON, `{"code":"abc"}`, "abc", "wxq"},
		{"JSON appid in body wins over query", "POST", "appid=wxq", ctJSON, `{"code":"abc","appid":"wxb"}`, "abc", "wxb"},
		{"JSON escapes decoded", "POST", "", ctJSON, `{"code":"a\/b\u0063"}`, "a/bc", ""},
		{"JSON string body", "POST", "", ctJSON, `"0a1B2c3D"`, "0a1B2c3D", ""},
		{"JSON string body with appid in query", "POST", "appid=wx9", ctJSON, ` "0a1B2c3D" ` + "\n", "0a1B2c3D", "wx9"},
		{"JSON bare code", "POST", "", ctJSON, `0a1B2c3D`, "0a1B2c3D", ""},
		{"JSON bare code newline", "POST", "", ctJSON, "0a1B2c3D\n", "0a1B2c3D", ""},
		{"JSON 128 chars", "POST", "", ctJSON, `{"code":"` + code128 + `"}`, code128, ""},

		{"form", "POST", "", ctForm, "code=0a1B2c3D&appid=wx123", "0a1B2c3D", "wx123"},
		{"form charset", "POST", "", ctForm + "; charset=UTF-8", "code=abc", "abc", ""},
		{"form percent-encoded", "POST", "", ctForm, "code=a%26b%3Dc", "a&b=c", ""},
		{"form appid from query", "POST", "appid=wxq", ctForm, "code=abc", "abc", "wxq"},

		{"text/plain", "POST", "", ctText, "0a1B2c3D", "0a1B2c3D", ""},
		{"text/plain charset", "POST", "", "text/plain; charset=utf-8", "0a1B2c3D", "0a1B2c3D", ""},
		{"text/plain trailing newline", "POST", "", ctText, "0a1B2c3D\r\n", "0a1B2c3D", ""},
		{"text/plain appid via query", "POST", "appid=wx123", ctText, "0a1B2c3D", "0a1B2c3D", "wx123"},
		{"text/plain 128 chars", "POST", "", ctText, code128, code128, ""},
		{"text/plain every printable", "POST", "", ctText, printable, printable, ""},
		{"text/plain looks like JSON", "POST", "", ctText, `{"code":"x"}`, `{"code":"x"}`, ""},

		// '&' and '=' are printable ASCII: at this layer such a code is
		// valid, and it must reach the worker unaltered. Encoding it for
		// the WeChat query is the upstream client's job.
		{"injection via JSON", "POST", "", ctJSON, `{"code":"abc&secret=x"}`, "abc&secret=x", ""},
		{"injection via text/plain", "POST", "", ctText, "abc&secret=x", "abc&secret=x", ""},
		{"injection via query", "GET", "code=abc%26secret%3Dx", "", "", "abc&secret=x", ""},
		{"injection via form", "POST", "", ctForm, "code=abc%26grant_type%3Dy", "abc&grant_type=y", ""},
		{"injection appid", "POST", "", ctJSON, `{"code":"abc","appid":"wx1&secret=s"}`, "abc", "wx1&secret=s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newParseRequest(tc.method, tc.query, tc.contentType, tc.body)
			req, e := parseRequest(r, testMaxBody)
			if e != nil {
				t.Fatalf("parseRequest: %v", e)
			}
			if req.Code != tc.wantCode || req.AppID != tc.wantAppID {
				t.Fatalf("got code %q appid %q, want code %q appid %q", req.Code, req.AppID, tc.wantCode, tc.wantAppID)
			}
		})
	}
}

func TestParseRequestRefuses(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("L", protocol.MaxTokenLen+1)
	tests := []struct {
		name        string
		method      string
		query       string
		contentType string
		body        string
		status      int
		// secret, when set, is a distinctive code the message must not echo.
		secret string
	}{
		// missing code
		{"GET no query", "GET", "", "", "", 400, ""},
		{"GET no code", "GET", "appid=wx1", "", "", 400, ""},
		{"GET empty code", "GET", "code=", "", "", 400, ""},
		{"GET code without =", "GET", "code", "", "", 400, ""},
		{"JSON no code", "POST", "", ctJSON, `{"appid":"wx1"}`, 400, ""},
		{"JSON empty object", "POST", "", ctJSON, `{}`, 400, ""},
		{"JSON empty code", "POST", "", ctJSON, `{"code":""}`, 400, ""},
		{"JSON empty string", "POST", "", ctJSON, `""`, 400, ""},
		{"form no code", "POST", "", ctForm, "appid=wx1", 400, ""},
		{"form empty code", "POST", "", ctForm, "code=", 400, ""},

		// empty body
		{"JSON empty body", "POST", "", ctJSON, "", 400, ""},
		{"JSON blank body", "POST", "", ctJSON, " \r\n\t ", 400, ""},
		{"form empty body", "POST", "", ctForm, "", 400, ""},
		{"text/plain empty body", "POST", "", ctText, "", 400, ""},
		{"text/plain blank body", "POST", "", ctText, " \n", 400, ""},
		{"POST code in query only", "POST", "code=abc", ctText, "", 400, ""},

		// too long
		{"GET 129 chars", "GET", "code=" + long, "", "", 400, long},
		{"JSON 129 chars", "POST", "", ctJSON, `{"code":"` + long + `"}`, 400, long},
		{"JSON string 129 chars", "POST", "", ctJSON, `"` + long + `"`, 400, long},
		{"JSON bare 129 chars", "POST", "", ctJSON, long, 400, long},
		{"form 129 chars", "POST", "", ctForm, "code=" + long, 400, long},
		{"text/plain 129 chars", "POST", "", ctText, long, 400, long},
		{"appid 129 chars", "GET", "code=abc&appid=" + long, "", "", 400, ""},

		// spaces and control characters
		{"GET space %20", "GET", "code=Sp4ce%20Code", "", "", 400, "Sp4ce Code"},
		{"GET space +", "GET", "code=Sp4ce+Code", "", "", 400, "Sp4ce Code"},
		{"GET tab", "GET", "code=Tab0Code%09x", "", "", 400, "Tab0Code\tx"},
		{"GET NUL", "GET", "code=Nul0Code%00x", "", "", 400, "Nul0Code\x00x"},
		{"GET DEL", "GET", "code=Del0Code%7Fx", "", "", 400, "Del0Code\x7fx"},
		{"GET newline", "GET", "code=Lf00Code%0Ax", "", "", 400, "Lf00Code\nx"},
		{"GET leading space", "GET", "code=%20Lead0Code", "", "", 400, " Lead0Code"},
		{"GET trailing space", "GET", "code=Trail0Code%20", "", "", 400, "Trail0Code "},
		{"JSON space", "POST", "", ctJSON, `{"code":"Sp4ce Code"}`, 400, "Sp4ce Code"},
		{"JSON leading space kept, refused", "POST", "", ctJSON, `{"code":" Lead0Code"}`, 400, " Lead0Code"},
		{"JSON tab", "POST", "", ctJSON, `{"code":"Tab0Code\tx"}`, 400, "Tab0Code\tx"},
		{"JSON NUL", "POST", "", ctJSON, `{"code":"Nul0Code\u0000x"}`, 400, "Nul0Code\x00x"},
		{"JSON DEL", "POST", "", ctJSON, "{\"code\":\"Del0Code\x7fx\"}", 400, "Del0Code\x7fx"},
		{"JSON bare with space", "POST", "", ctJSON, "Sp4ce Code", 400, "Sp4ce Code"},
		{"form space", "POST", "", ctForm, "code=Sp4ce+Code", 400, "Sp4ce Code"},
		{"form NUL", "POST", "", ctForm, "code=Nul0Code%00x", 400, "Nul0Code\x00x"},
		{"text/plain inner space", "POST", "", ctText, "Sp4ce Code", 400, "Sp4ce Code"},
		{"text/plain inner tab", "POST", "", ctText, "Tab0Code\tx", 400, "Tab0Code\tx"},
		{"text/plain NUL", "POST", "", ctText, "Nul0Code\x00x", 400, "Nul0Code\x00x"},
		{"text/plain DEL", "POST", "", ctText, "Del0Code\x7f", 400, "Del0Code\x7f"},
		{"text/plain two lines", "POST", "", ctText, "Line1Code\nLine2Code", 400, "Line1Code\nLine2Code"},
		{"appid with space", "GET", "code=abc&appid=wx+1", "", "", 400, ""},
		{"appid NUL", "POST", "", ctJSON, `{"code":"abc","appid":"wx\u00001"}`, 400, ""},

		// non-ASCII and invalid UTF-8: refused, never repaired
		{"GET non-ASCII UTF-8", "GET", "code=Caf%C3%A9Code", "", "", 400, "CaféCode"},
		{"GET invalid UTF-8", "GET", "code=Bad0Code%FF", "", "", 400, "Bad0Code\xff"},
		{"GET raw invalid UTF-8", "GET", "code=Bad0Code\xff", "", "", 400, "Bad0Code\xff"},
		{"JSON non-ASCII", "POST", "", ctJSON, `{"code":"CaféCode"}`, 400, "CaféCode"},
		{"JSON escaped non-ASCII", "POST", "", ctJSON, `{"code":"Caf\u00e9Code"}`, 400, "CaféCode"},
		{"JSON invalid UTF-8", "POST", "", ctJSON, "{\"code\":\"Bad0Code\xff\"}", 400, "Bad0Code"},
		{"JSON lone surrogate", "POST", "", ctJSON, `{"code":"Bad0Code\ud800"}`, 400, "Bad0Code"},
		{"JSON string invalid UTF-8", "POST", "", ctJSON, "\"Bad0Code\xff\"", 400, "Bad0Code"},
		{"JSON bare invalid UTF-8", "POST", "", ctJSON, "Bad0Code\xff", 400, "Bad0Code"},
		{"form non-ASCII", "POST", "", ctForm, "code=Caf%C3%A9Code", 400, "CaféCode"},
		{"form invalid UTF-8", "POST", "", ctForm, "code=Bad0Code%FF", 400, "Bad0Code\xff"},
		{"form raw invalid UTF-8", "POST", "", ctForm, "code=Bad0Code\xff", 400, "Bad0Code\xff"},
		{"text/plain non-ASCII", "POST", "", ctText, "CaféCode", 400, "CaféCode"},
		{"text/plain invalid UTF-8", "POST", "", ctText, "Bad0Code\xff", 400, "Bad0Code\xff"},
		{"text/plain BOM", "POST", "", ctText, "\ufeffBom0Code", 400, "Bom0Code"},
		// Unicode spaces are not trimmed away: that would repair the code.
		{"text/plain NBSP", "POST", "", ctText, "Nbsp0Code\u00a0", 400, "Nbsp0Code"},
		{"text/plain NEL", "POST", "", ctText, "\u0085Nel0Code", 400, "Nel0Code"},
		{"JSON bare NBSP", "POST", "", ctJSON, "\u00a0Nbsp0Code", 400, "Nbsp0Code"},
		{"JSON object NBSP around", "POST", "", ctJSON, "\u00a0{\"code\":\"Nbsp0Code\"}", 400, "Nbsp0Code"},
		{"appid non-ASCII", "GET", "code=abc&appid=wx%C3%A9", "", "", 400, ""},

		// repeated fields
		{"GET repeated code", "GET", "code=Rep0Code1&code=Rep0Code2", "", "", 400, "Rep0Code1"},
		{"GET repeated same code", "GET", "code=Rep0Code1&code=Rep0Code1", "", "", 400, "Rep0Code1"},
		{"GET repeated appid", "GET", "code=abc&appid=wx1&appid=wx2", "", "", 400, ""},
		{"form repeated code", "POST", "", ctForm, "code=Rep0Code1&code=Rep0Code2", 400, "Rep0Code1"},
		{"form repeated appid", "POST", "", ctForm, "code=abc&appid=wx1&appid=wx2", 400, ""},
		{"text/plain repeated appid in query", "POST", "appid=wx1&appid=wx2", ctText, "abc", 400, ""},

		// malformed encodings
		{"GET bad percent", "GET", "code=Pct0Code%zz", "", "", 400, "Pct0Code"},
		{"GET truncated percent", "GET", "code=Pct0Code%4", "", "", 400, "Pct0Code"},
		{"GET semicolon", "GET", "code=Semi0Code;x", "", "", 400, "Semi0Code"},
		{"POST bad percent in query", "POST", "appid=%zz", ctText, "abc", 400, ""},
		{"form bad percent", "POST", "", ctForm, "code=Pct0Code%zz", 400, "Pct0Code"},

		// malformed JSON
		{"JSON number code", "POST", "", ctJSON, `{"code":12345678}`, 400, "12345678"},
		{"JSON null code", "POST", "", ctJSON, `{"code":null}`, 400, ""},
		{"JSON object code", "POST", "", ctJSON, `{"code":{"v":"Obj0Code"}}`, 400, "Obj0Code"},
		{"JSON array code", "POST", "", ctJSON, `{"code":["Arr0Code"]}`, 400, "Arr0Code"},
		{"JSON array body", "POST", "", ctJSON, `["Arr0Code"]`, 400, "Arr0Code"},
		{"JSON null body", "POST", "", ctJSON, "null\n", 400, ""},
		{"JSON true body", "POST", "", ctJSON, `true`, 400, ""},
		{"JSON false body", "POST", "", ctJSON, ` false `, 400, ""},
		{"JSON bool code", "POST", "", ctJSON, `{"code":true}`, 400, ""},
		{"JSON number appid", "POST", "", ctJSON, `{"code":"abc","appid":1}`, 400, ""},
		{"JSON truncated", "POST", "", ctJSON, `{"code":"Trunc0Code"`, 400, "Trunc0Code"},
		{"JSON unterminated string", "POST", "", ctJSON, `"Trunc0Code`, 400, "Trunc0Code"},
		{"JSON trailing garbage", "POST", "", ctJSON, `{"code":"Tail0Code"}x`, 400, "Tail0Code"},
		{"JSON trailing object", "POST", "", ctJSON, `{"code":"Tail0Code"}{"code":"other"}`, 400, "Tail0Code"},
		{"JSON trailing brace", "POST", "", ctJSON, `{"code":"Tail0Code"}}`, 400, "Tail0Code"},
		{"JSON trailing bracket", "POST", "", ctJSON, `{"code":"Tail0Code"}]`, 400, "Tail0Code"},
		{"JSON string trailing garbage", "POST", "", ctJSON, `"Tail0Code"x`, 400, "Tail0Code"},
		{"JSON two strings", "POST", "", ctJSON, `"Tail0Code" "x"`, 400, "Tail0Code"},

		// body too large
		{"JSON body over max", "POST", "", ctJSON, `{"code":"Big0Code","pad":"` + strings.Repeat("p", testMaxBody) + `"}`, 413, "Big0Code"},
		{"text/plain body over max", "POST", "", ctText, strings.Repeat("b", testMaxBody+1), 413, ""},
		{"unsupported type over max", "POST", "", "image/png", strings.Repeat("b", testMaxBody+1), 413, ""},

		// content type
		{"no Content-Type", "POST", "", "", "code=Ct0Code", 415, "Ct0Code"},
		{"no Content-Type empty body", "POST", "", "", "", 415, ""},
		{"XML", "POST", "", "application/xml", "<code>Ct0Code</code>", 415, "Ct0Code"},
		{"multipart", "POST", "", "multipart/form-data; boundary=x", "--x--", 415, ""},
		{"octet-stream", "POST", "", "application/octet-stream", "Ct0Code", 415, "Ct0Code"},
		{"text/html", "POST", "", "text/html", "Ct0Code", 415, "Ct0Code"},
		{"malformed Content-Type", "POST", "", "application/json; =", `{"code":"Ct0Code"}`, 415, "Ct0Code"},
		{"garbage Content-Type", "POST", "", "/", `{"code":"Ct0Code"}`, 415, "Ct0Code"},

		// method
		{"PUT", "PUT", "code=Meth0Code", ctJSON, `{"code":"Meth0Code"}`, 405, "Meth0Code"},
		{"DELETE", "DELETE", "code=Meth0Code", "", "", 405, "Meth0Code"},
		{"PATCH", "PATCH", "code=Meth0Code", ctJSON, `{"code":"Meth0Code"}`, 405, "Meth0Code"},
		{"OPTIONS", "OPTIONS", "code=Meth0Code", "", "", 405, "Meth0Code"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newParseRequest(tc.method, tc.query, tc.contentType, tc.body)
			req, e := parseRequest(r, testMaxBody)
			if e == nil {
				t.Fatalf("parseRequest accepted code %q appid %q; want %d", req.Code, req.AppID, tc.status)
			}
			checkRefusal(t, e, tc.status, tc.secret)
		})
	}
}

func checkRefusal(t *testing.T, e *protocol.Error, status int, secret string) {
	t.Helper()
	if e.Kind != protocol.KindBadRequest || e.Status != status || e.Retry != protocol.RetryNo {
		t.Errorf("got kind %s status %d retry %s, want bad_request %d no (%s)", e.Kind, e.Status, e.Retry, status, e.Message)
	}
	if e.Message == "" {
		t.Error("empty message")
	}
	if e.Cause != nil {
		t.Errorf("unexpected cause %v", e.Cause)
	}
	if secret != "" && (strings.Contains(e.Message, secret) || strings.Contains(e.Error(), secret)) {
		t.Errorf("message %q echoes the code %q", e.Message, secret)
	}
}

// TestParseRequestBodyLimit pins the boundary: maxBody bytes are read,
// one more is refused, both through the parser's own limit and through
// the http.MaxBytesReader the handler wraps the body in.
func TestParseRequestBodyLimit(t *testing.T) {
	t.Parallel()
	const maxBody = 64
	code := strings.Repeat("k", 60)
	exact := "  " + code + "\r\n" // 64 bytes
	over := exact + " "
	if len(exact) != maxBody {
		t.Fatalf("bad fixture: %d bytes", len(exact))
	}
	for _, wrap := range []bool{false, true} {
		for _, tc := range []struct {
			body   string
			status int
		}{{exact, 0}, {over, 413}} {
			r := newParseRequest("POST", "", ctText, tc.body)
			if wrap {
				r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, maxBody)
			}
			req, e := parseRequest(r, maxBody)
			switch {
			case tc.status == 0 && e != nil:
				t.Errorf("wrap=%v %d bytes: %v", wrap, len(tc.body), e)
			case tc.status == 0 && req.Code != code:
				t.Errorf("wrap=%v: code %q", wrap, req.Code)
			case tc.status != 0 && e == nil:
				t.Errorf("wrap=%v %d bytes: accepted", wrap, len(tc.body))
			case tc.status != 0:
				checkRefusal(t, e, tc.status, "")
				if !strings.Contains(e.Message, "64") {
					t.Errorf("message %q does not name the limit", e.Message)
				}
			}
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestParseRequestBodyReadError(t *testing.T) {
	t.Parallel()
	r := newParseRequest("POST", "", ctText, "")
	r.Body = io.NopCloser(io.MultiReader(strings.NewReader("Part0Code"), errReader{}))
	_, e := parseRequest(r, testMaxBody)
	if e == nil {
		t.Fatal("accepted a body that failed to read")
	}
	checkRefusal(t, e, 400, "Part0Code")
}
