package abi

// Message is a chat message.
type Message struct {
	Role    string // 1: system, developer, user, assistant or tool
	Content string // 2
	Name    string // 3
}

// Params are the generation parameters of a completion. Nil pointers, 0 and empty mean "not set": the
// provider's default, or (in a PromptOutput) the client's value.
type Params struct {
	Temperature *float64 // 1
	MaxTokens   int64    // 2
	TopP        *float64 // 3
	Stop        []string // 4
}

// Merge returns p with the fields set in o replacing its own.
func (p Params) Merge(o Params) Params {
	if o.Temperature != nil {
		p.Temperature = o.Temperature
	}
	if o.MaxTokens != 0 {
		p.MaxTokens = o.MaxTokens
	}
	if o.TopP != nil {
		p.TopP = o.TopP
	}
	if len(o.Stop) > 0 {
		p.Stop = o.Stop
	}
	return p
}

// LLMRequest is the request of llm_open: a streamed chat completion through the tenant's configured
// providers.
type LLMRequest struct {
	Model    string    // 1: "" means the tenant's default model
	Messages []Message // 2
	Params   Params    // 3
}

// LLMEvent is one event of a completion stream, as llm_read returns them. A stream is a sequence of
// events with Delta text, then one final event with FinishReason and Usage (or Error).
type LLMEvent struct {
	Delta        string // 1: next piece of the completion text
	FinishReason string // 2: on the final event: stop, length, ...
	Usage        Usage  // 3: on the final event
	Error        string // 4: the stream failed; no further events
	Model        string // 5: the model that answers (first event)
}

// Usage counts tokens.
type Usage struct {
	PromptTokens     int64 // 1
	CompletionTokens int64 // 2
}

// PromptInput is the input of the prompt hook: everything the tenant's prompt logic may use to build
// the messages sent to the model.
type PromptInput struct {
	Messages []Message   // 1: the client's messages, as sent
	History  []Message   // 2: earlier turns of the conversation named by the request, oldest first
	Chunks   []SearchHit // 3: retrieved chunks, best first
	Tags     []Pair      // 4: the route decision's tags
	Model    string      // 5: the model the client asked for
	Params   Params      // 6: the client's parameters
	KeyLabel string      // 7: the API key's label (tier)
}

// PromptOutput is the result of the prompt hook: the completion to run.
type PromptOutput struct {
	Messages []Message // 1: the messages to send, in order
	Model    string    // 2: "" keeps the requested model
	Params   Params    // 3: fields set here replace the client's (Params.Merge)
	Error    string    // 15
}

func appendMessage(e *Encoder, field int, m *Message) {
	k := e.Begin(field)
	e.String(1, m.Role)
	e.String(2, m.Content)
	e.String(3, m.Name)
	e.End(k)
}

func decodeMessage(d *Decoder) Message {
	var m Message
	s := d.Message()
	for s.Next() {
		switch s.Field() {
		case 1:
			m.Role = s.String()
		case 2:
			m.Content = s.String()
		case 3:
			m.Name = s.String()
		}
	}
	d.Merge(&s)
	return m
}

func appendParams(e *Encoder, field int, p *Params) {
	if p.Temperature == nil && p.MaxTokens == 0 && p.TopP == nil && len(p.Stop) == 0 {
		return
	}
	k := e.Begin(field)
	if p.Temperature != nil {
		e.FloatAlways(1, *p.Temperature)
	}
	e.Int(2, p.MaxTokens)
	if p.TopP != nil {
		e.FloatAlways(3, *p.TopP)
	}
	for _, s := range p.Stop {
		e.String(4, s)
	}
	e.End(k)
}

func decodeParams(d *Decoder) Params {
	var p Params
	s := d.Message()
	for s.Next() {
		switch s.Field() {
		case 1:
			v := s.Float()
			p.Temperature = &v
		case 2:
			p.MaxTokens = s.Int()
		case 3:
			v := s.Float()
			p.TopP = &v
		case 4:
			p.Stop = append(p.Stop, s.String())
		}
	}
	d.Merge(&s)
	return p
}

// AppendTo appends the encoding of r to b.
func (r *LLMRequest) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.String(1, r.Model)
	for i := range r.Messages {
		appendMessage(&e, 2, &r.Messages[i])
	}
	appendParams(&e, 3, &r.Params)
	return e.B
}

// Decode replaces r with the decoding of b.
func (r *LLMRequest) Decode(b []byte) error {
	*r = LLMRequest{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			r.Model = d.String()
		case 2:
			r.Messages = append(r.Messages, decodeMessage(&d))
		case 3:
			r.Params = decodeParams(&d)
		}
	}
	return malformed("llm request", &d)
}

// AppendTo appends the encoding of ev to b.
func (ev *LLMEvent) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	e.String(1, ev.Delta)
	e.String(2, ev.FinishReason)
	if ev.Usage != (Usage{}) {
		k := e.Begin(3)
		e.Int(1, ev.Usage.PromptTokens)
		e.Int(2, ev.Usage.CompletionTokens)
		e.End(k)
	}
	e.String(4, ev.Error)
	e.String(5, ev.Model)
	return e.B
}

// Decode replaces ev with the decoding of b.
func (ev *LLMEvent) Decode(b []byte) error {
	*ev = LLMEvent{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			ev.Delta = d.String()
		case 2:
			ev.FinishReason = d.String()
		case 3:
			s := d.Message()
			for s.Next() {
				switch s.Field() {
				case 1:
					ev.Usage.PromptTokens = s.Int()
				case 2:
					ev.Usage.CompletionTokens = s.Int()
				}
			}
			d.Merge(&s)
		case 4:
			ev.Error = d.String()
		case 5:
			ev.Model = d.String()
		}
	}
	return malformed("llm event", &d)
}

// AppendTo appends the encoding of p to b.
func (p *PromptInput) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	for i := range p.Messages {
		appendMessage(&e, 1, &p.Messages[i])
	}
	for i := range p.History {
		appendMessage(&e, 2, &p.History[i])
	}
	for i := range p.Chunks {
		k := e.Begin(3)
		p.Chunks[i].appendTo(&e)
		e.End(k)
	}
	for _, t := range p.Tags {
		e.Pair(4, t.Key, t.Value)
	}
	e.String(5, p.Model)
	appendParams(&e, 6, &p.Params)
	e.String(7, p.KeyLabel)
	return e.B
}

// Decode replaces p with the decoding of b. Byte slices alias b.
func (p *PromptInput) Decode(b []byte) error {
	d := Decoder{B: b}
	return p.decode(&d)
}

// DecodeString is Decode over a string: strings are substrings of s (see Request.DecodeString).
func (p *PromptInput) DecodeString(s string) error {
	d := NewStringDecoder(s)
	return p.decode(&d)
}

func (p *PromptInput) decode(d *Decoder) error {
	*p = PromptInput{}
	for d.Next() {
		switch d.Field() {
		case 1:
			p.Messages = append(p.Messages, decodeMessage(d))
		case 2:
			p.History = append(p.History, decodeMessage(d))
		case 3:
			var h SearchHit
			s := d.Message()
			h.decode(&s)
			d.Merge(&s)
			p.Chunks = append(p.Chunks, h)
		case 4:
			k, v := d.Pair()
			p.Tags = append(p.Tags, Pair{k, v})
		case 5:
			p.Model = d.String()
		case 6:
			p.Params = decodeParams(d)
		case 7:
			p.KeyLabel = d.String()
		}
	}
	return malformed("prompt input", d)
}

// AppendTo appends the encoding of p to b.
func (p *PromptOutput) AppendTo(b []byte) []byte {
	e := Encoder{B: b}
	for i := range p.Messages {
		appendMessage(&e, 1, &p.Messages[i])
	}
	e.String(2, p.Model)
	appendParams(&e, 3, &p.Params)
	e.String(15, p.Error)
	return e.B
}

// Decode replaces p with the decoding of b.
func (p *PromptOutput) Decode(b []byte) error {
	*p = PromptOutput{}
	d := Decoder{B: b}
	for d.Next() {
		switch d.Field() {
		case 1:
			p.Messages = append(p.Messages, decodeMessage(&d))
		case 2:
			p.Model = d.String()
		case 3:
			p.Params = decodeParams(&d)
		case 15:
			p.Error = d.String()
		}
	}
	return malformed("prompt output", &d)
}
