package server

import "github.com/plinth-dev/plinth/abi"

// LLM and response-streaming host calls. Served by the LLM service once it is configured.

func (h *hostCall) LLMOpen(req []byte) int32               { return int32(abi.StatusUnavailable) }
func (h *hostCall) LLMRead(handle int32, buf []byte) int32 { return int32(abi.StatusUnavailable) }
func (h *hostCall) LLMClose(handle int32) int32            { return int32(abi.StatusUnavailable) }
func (h *hostCall) RespStart(resp []byte) int32            { return int32(abi.StatusUnavailable) }
func (h *hostCall) RespWrite(data []byte) int32            { return int32(abi.StatusUnavailable) }
