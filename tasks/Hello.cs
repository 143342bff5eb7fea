// A C# task. Compiled once by the daemon (dotnet build, or Mono's mcs when the
// .NET SDK is missing) and cached until this file changes. No NuGet packages:
// System.Text.Json is not in Mono, so the one field we need is read by hand.
using System;
using System.Text;

public static class Hello
{
    public static int Main()
    {
        string payload = Console.In.ReadToEnd();
        string name = ReadString(payload, "name") ?? "world";
        Console.WriteLine("::progress 50 greeting");
        Console.Error.WriteLine("greeting " + name + " for job " + Environment.GetEnvironmentVariable("JOB_ID"));
        Console.WriteLine("::result {\"greeting\": \"" + Escape("Hello, " + name + "!") + "\"}");
        return 0;
    }

    // The string value of "key" at any depth, or null. Enough for a flat payload.
    static string ReadString(string json, string key)
    {
        int at = json.IndexOf("\"" + key + "\"", StringComparison.Ordinal);
        if (at < 0) return null;
        int i = json.IndexOf(':', at + key.Length + 2);
        if (i < 0) return null;
        i++;
        while (i < json.Length && char.IsWhiteSpace(json[i])) i++;
        if (i >= json.Length || json[i] != '"') return null;
        var sb = new StringBuilder();
        for (i++; i < json.Length; i++)
        {
            char c = json[i];
            if (c == '"') return sb.ToString();
            if (c == '\\' && i + 1 < json.Length)
            {
                char e = json[++i];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u':
                        if (i + 4 < json.Length)
                        {
                            sb.Append((char)Convert.ToInt32(json.Substring(i + 1, 4), 16));
                            i += 4;
                        }
                        break;
                    default: sb.Append(e); break;
                }
            }
            else sb.Append(c);
        }
        return null;
    }

    static string Escape(string s)
    {
        var sb = new StringBuilder();
        foreach (char c in s)
        {
            if (c == '"' || c == '\\') sb.Append('\\').Append(c);
            else if (c < ' ') sb.AppendFormat("\\u{0:x4}", (int)c);
            else sb.Append(c);
        }
        return sb.ToString();
    }
}
