package fakewx

import "strings"

// magic is a parsed magic code.
type magic struct {
	kind magicKind
	n    int64
}

type magicKind uint8

const (
	magicNone magicKind = iota
	magicInvalid
	magicBlocked
	magicHang
	magicBusy
	magicLimit
	magic5xx
	magicGarbage
	magicSlow
)

// parseMagic parses the grammar in the package doc. Anything that does not
// match exactly is an ordinary code, so a real code can never trip it by
// accident (WeChat's codes are alphanumeric).
func parseMagic(code string) magic {
	rest, ok := strings.CutPrefix(code, "fx-")
	if !ok {
		return magic{}
	}
	directive, _, ok := strings.Cut(rest, "-")
	if !ok {
		return magic{}
	}
	switch directive {
	case "invalid":
		return magic{kind: magicInvalid}
	case "blocked":
		return magic{kind: magicBlocked}
	case "hang":
		return magic{kind: magicHang}
	}
	for _, c := range [...]struct {
		prefix string
		kind   magicKind
	}{
		{"busy", magicBusy},
		{"limit", magicLimit},
		{"5xx", magic5xx},
		{"garbage", magicGarbage},
		{"slow", magicSlow},
	} {
		digits, ok := strings.CutPrefix(directive, c.prefix)
		if !ok {
			continue
		}
		if n, ok := parseCount(digits); ok {
			return magic{kind: c.kind, n: n}
		}
		return magic{}
	}
	return magic{}
}

// parseCount accepts 1 to 9 ASCII digits and nothing else: strconv.Atoi
// would also accept a sign, and more digits could overflow.
func parseCount(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 9 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
