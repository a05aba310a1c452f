package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// parseRequest reads a code (and maybe an appid) from any of the request
// shapes mini-programs send: GET with a query; POST with a JSON object, a
// form, or a text/plain body that is the code itself. It validates what it
// read and never alters it: a bad code is refused, not repaired.
func parseRequest(r *http.Request, maxBody int64) (protocol.Request, *protocol.Error) {
	var req protocol.Request
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return req, protocol.New(protocol.KindBadRequest, "query string is not valid URL encoding")
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		var e *protocol.Error
		if req.Code, e = single(query, "code"); e != nil {
			return req, e
		}
	case http.MethodPost:
		body, e := readBody(r, maxBody)
		if e != nil {
			return req, e
		}
		if req, e = parseBody(r.Header.Get("Content-Type"), body); e != nil {
			return req, e
		}
	default:
		return req, protocol.Make(protocol.KindBadRequest, "method "+r.Method+" is not allowed: use GET or POST",
			protocol.Status(http.StatusMethodNotAllowed))
	}
	if req.AppID == "" {
		// Any shape may name the app in the query string; text/plain
		// bodies can do it no other way.
		var e *protocol.Error
		if req.AppID, e = single(query, "appid"); e != nil {
			return req, e
		}
	}
	return req, req.Validate()
}

// single returns the one value of key, refusing repeats: with two codes,
// which one the caller meant is a guess.
func single(v url.Values, key string) (string, *protocol.Error) {
	switch vs := v[key]; len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	default:
		return "", protocol.New(protocol.KindBadRequest, "%s is given more than once", key)
	}
}

func readBody(r *http.Request, maxBody int64) ([]byte, *protocol.Error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge(maxBody)
		}
		return nil, protocol.New(protocol.KindBadRequest, "could not read the request body")
	}
	if int64(len(body)) > maxBody {
		return nil, tooLarge(maxBody)
	}
	return body, nil
}

func tooLarge(maxBody int64) *protocol.Error {
	return protocol.Make(protocol.KindBadRequest, "request body is larger than "+strconv.FormatInt(maxBody, 10)+" bytes",
		protocol.Status(http.StatusRequestEntityTooLarge))
}

const shapes = "send application/json {\"code\":C,\"appid\":A}, application/x-www-form-urlencoded code=C&appid=A, or text/plain C"

func parseBody(contentType string, body []byte) (protocol.Request, *protocol.Error) {
	var req protocol.Request
	mt, _, err := mime.ParseMediaType(contentType)
	if contentType == "" || err != nil {
		return req, protocol.Make(protocol.KindBadRequest, "missing or malformed Content-Type: "+shapes,
			protocol.Status(http.StatusUnsupportedMediaType))
	}
	switch mt {
	case "application/json":
		return parseJSON(body)
	case "application/x-www-form-urlencoded":
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return req, protocol.New(protocol.KindBadRequest, "form body is not valid URL encoding")
		}
		var e *protocol.Error
		if req.Code, e = single(form, "code"); e != nil {
			return req, e
		}
		req.AppID, e = single(form, "appid")
		return req, e
	case "text/plain":
		req.Code = string(trimASCIISpace(body))
		return req, nil
	default:
		return req, protocol.Make(protocol.KindBadRequest, "Content-Type "+mt+" is not supported: "+shapes,
			protocol.Status(http.StatusUnsupportedMediaType))
	}
}

// parseJSON reads {"code":C,"appid":A}. wx.request sends a string body as
// is, even labelled application/json, so a JSON string or a bare code is
// taken as the code too (one of the seed clients does exactly that). The
// JSON values that cannot be a code (arrays, null, true, false) are
// refused.
func parseJSON(body []byte) (protocol.Request, *protocol.Error) {
	var req protocol.Request
	trimmed := trimASCIISpace(body)
	if len(trimmed) == 0 {
		return req, protocol.New(protocol.KindBadRequest, "empty body: %s", shapes)
	}
	switch trimmed[0] {
	case '{':
		var in struct {
			Code  *string `json:"code"`
			AppID *string `json:"appid"`
		}
		// Unmarshal, unlike a Decoder, refuses anything after the object.
		if err := json.Unmarshal(trimmed, &in); err != nil {
			return req, protocol.New(protocol.KindBadRequest, "body is not a JSON object with string fields code and appid")
		}
		if in.Code != nil {
			req.Code = *in.Code
		}
		if in.AppID != nil {
			req.AppID = *in.AppID
		}
	case '"':
		if err := json.Unmarshal(trimmed, &req.Code); err != nil {
			return req, protocol.New(protocol.KindBadRequest, "body is not a JSON string")
		}
	case '[':
		// No code starts with a bracket; a bare one would only cost a
		// call to WeChat to learn it is invalid.
		return req, protocol.New(protocol.KindBadRequest, "body is a JSON array: %s", shapes)
	default:
		if lit := string(trimmed); lit == "null" || lit == "true" || lit == "false" {
			return req, protocol.New(protocol.KindBadRequest, "body is JSON %s, not a code: %s", lit, shapes)
		}
		req.Code = string(trimmed)
	}
	return req, nil
}

// trimASCIISpace drops the ASCII white space around a body, such as a
// trailing newline. Unicode spaces (U+00A0, U+0085) stay, so a code
// wrapped in them is refused rather than repaired.
func trimASCIISpace(b []byte) []byte { return bytes.Trim(b, " \t\r\n\v\f") }
